"""Benchmark suites: eet against HF's own paths on the same inputs, in one process, on one device.

    python -m evaluation.bench                           # every suite, full size (needs a CUDA GPU)
    python -m evaluation.bench --suite generate --models gpt2,gpt2-xl
    python -m evaluation.bench --quick                   # every suite on CPU with tiny configs (CI)

One module per suite (generate, encoder, decoder_layer, memory, cold_start, decode_profile, sentence_embed);
shared helpers: context (options, time budget), timing (CUDA-event medians), shapes (configs and fast model builds),
engines (how each engine prepares a model), roofline (share of the measured H200 ceilings), output
(JSON/markdown/PNG), sentences (sentence-embed's mixed-length inputs).
"""
