"""The packed encoder of the encoder-record families other than BERT (RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA with
its embeddings projection, DistilBERT; BERT: test_encoder_cuda.py, test_encoder_model_graphs_cuda.py) on the GPU:
eager packed forwards against HF sdpa, the encoder's own CUDA graphs, whole-model graphs of each family's heads
(keyword and positional calls, NaN-poisoned static outputs), the capture-time packing called directly over
NaN-poisoned memory, and sentence-transformers' encode().

Tolerances, as tests/gpu/test_encoder_cuda.py: fp32 within 1e-4 of HF (sdpa, fp32); fp16 / bf16 error against HF fp32
at most twice HF's own error in that dtype plus 1e-3 (flash-attention's rule). Lengths and ids are drawn per run
(EET_TEST_SEED replays one); every batch has a full row and rows of length 1.
"""

from __future__ import annotations

import copy
import functools
import os
import random

import pytest
import torch
import transformers as tf

import eet_hf
from eet_hf import patches
from eet_hf.encoder import graphs, model_graphs
from eet_hf.encoder.packing import capacity_for, host_summary

from .conftest import check_outputs, poison_next_alloc, rel_err

SEED = int(os.environ.get("EET_TEST_SEED", random.randrange(1 << 31)))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VOCAB = 1000
RECORDS = patches.encoder_records.RECORDS
_ENC = dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072, vocab_size=VOCAB)
CONFIGS = {
    # RoBERTa's positions run from pad_token_id + 1: 512 tokens need 514 rows.
    "roberta": lambda: tf.RobertaConfig(**_ENC, max_position_embeddings=514, pad_token_id=1),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(**_ENC, max_position_embeddings=514, pad_token_id=1),
    "camembert": lambda: tf.CamembertConfig(**_ENC, max_position_embeddings=514, pad_token_id=1),
    "electra": lambda: tf.ElectraConfig(**_ENC, embedding_size=128, max_position_embeddings=512, pad_token_id=0),
    "distilbert": lambda: tf.DistilBertConfig(dim=768, n_layers=2, n_heads=12, hidden_dim=3072, vocab_size=VOCAB,
                                              max_position_embeddings=512, pad_token_id=0),
}
FAMILIES = sorted(CONFIGS)


def _head(family: str, suffix: str) -> str:
    return RECORDS[family].heads[0].removesuffix("Model") + suffix


def _model(family: str, head: str, dtype: torch.dtype):
    torch.manual_seed(0)
    model = getattr(tf, head)(CONFIGS[family]())
    model.set_attn_implementation("sdpa")
    return model.to("cuda", dtype).eval()


def _models(family: str, head: str, dtype: torch.dtype):
    """(eet model, HF in dtype, HF in fp32) with the same weights."""
    hf, fp32 = _model(family, head, dtype), _model(family, head, torch.float32)
    return eet_hf.accelerate(copy.deepcopy(hf)), hf, fp32


def _inputs(rng: random.Random, family: str, lengths: list[int], seq: int, side: str = "right",
            choices: int | None = None) -> dict[str, torch.Tensor]:
    """Fresh ids (pad_token_id at padding, never inside a row), the mask, token types where the family has them."""
    pad = CONFIGS[family]().pad_token_id
    pos = torch.arange(seq).view(1, -1)
    n = torch.tensor(lengths).view(-1, 1)
    mask = ((pos >= seq - n) if side == "left" else (pos < n)).long()
    gen = torch.Generator().manual_seed(rng.randrange(1 << 31))
    ids = torch.randint(5, VOCAB, (len(lengths), seq), generator=gen).masked_fill(mask == 0, pad)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in RECORDS[family].inputs:
        inputs["token_type_ids"] = torch.randint(0, 2, (len(lengths), seq), generator=gen) * mask
    if choices:
        inputs = {k: v.view(len(lengths) // choices, choices, seq) for k, v in inputs.items()}
    return {k: v.cuda() for k, v in inputs.items()}


def _lengths(rng: random.Random, batch: int, seq: int) -> list[int]:
    lengths = [rng.randint(1, seq) for _ in range(batch)]
    lengths[0], lengths[-1] = seq, 1
    return lengths


_check = functools.partial(check_outputs, seed=SEED)


def _call_all(models, inputs, *args):
    with torch.inference_mode():
        return [m(*args, **inputs) for m in models]


# ------------------------------------------------------------------------------------------------ eager packed path


@pytest.mark.parametrize("dname", ["fp16", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_encoder_parity_with_hf_sdpa(cuda_ops, family, dname, packed_calls, monkeypatch):
    monkeypatch.setattr(graphs, "ENABLED", False)  # the eager packed path (whole-model graphs need graphs.ENABLED)
    dtype = DTYPES[dname]
    models = _models(family, _head(family, "ForMaskedLM"), dtype)
    rng = random.Random(f"{SEED}-{family}-{dname}")
    lengths = [512, 256, 1, rng.randint(2, 511)] * 4
    inputs = _inputs(rng, family, lengths, 512)
    got, base, truth = _call_all(models, inputs)
    assert packed_calls, f"the packed encoder did not run: {eet_hf.explain(models[0])}"
    _check(got, base, truth, inputs["attention_mask"], dtype, f"{family} {dname}")


def test_electra_projection_and_distilbert_tree_are_recorded(cuda_ops):
    """The two trees that differ from BERT's take the packed encoder on CUDA too (nothing falls back)."""
    for family in ("electra", "distilbert"):
        model = eet_hf.accelerate(_model(family, _head(family, "ForSequenceClassification"), torch.float16))
        report = eet_hf.explain(model)
        assert not report.fallbacks, report
        assert "<model>: whole-model CUDA graphs" in report.accelerated, report
        assert report.kernels == "cuda"


@pytest.mark.parametrize("family", FAMILIES)
def test_capacity_packing_called_directly_writes_every_row(cuda_ops, family):
    """The capture-time body (fixed capacity, padding as extra segments) over NaN-poisoned memory: finite everywhere,
    zeros at padding, the exact path's real tokens."""
    model = eet_hf.accelerate(_model(family, RECORDS[family].heads[0], torch.float16))
    runtime = model.get_submodule(RECORDS[family].encoder).__dict__["_eet_encoder"]
    rng = random.Random(f"{SEED}-{family}-capacity")
    batch, seq, width = 4, 64, 768
    lengths = _lengths(rng, batch, seq)
    start = torch.zeros(batch, dtype=torch.int32, device="cuda")
    end = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    hidden = torch.randn(batch, seq, width, device="cuda", dtype=torch.float16)
    real = (torch.arange(seq, device="cuda").view(1, -1) < end.view(-1, 1)).unsqueeze(-1)
    total, _, _ = host_summary(start, end, seq)
    with torch.inference_mode():
        exact = runtime._capacity_forward(hidden, start, end, total)  # capacity == real tokens: no padding rows
        for capacity in (None, capacity_for(total, batch * seq)):
            poison_next_alloc(batch * seq * width, torch.float16)
            out = runtime._capacity_forward(hidden, start, end, capacity)
            torch.cuda.synchronize()
            assert torch.isfinite(out).all(), f"NaN/Inf (unwritten rows?) at capacity {capacity}, lengths {lengths}"
            assert torch.equal(out * ~real, torch.zeros_like(out)), f"padding not zero at capacity {capacity}"
            # The same kernels on other row counts: cuBLAS may pick another GEMM, rounding fp16 differently.
            assert rel_err(out[real.expand_as(out)], exact[real.expand_as(exact)]) <= 5e-3, (capacity, lengths)


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_graph_replay_with_new_lengths(cuda_ops, family, monkeypatch):
    """The encoder's own graphs (whole-model graphs off): eager (first sight), capture + replay, replay, fp16."""
    monkeypatch.setattr(model_graphs, "ENABLED", False)
    models = _models(family, RECORDS[family].heads[0], torch.float16)
    inner = models[0].get_submodule(RECORDS[family].encoder).__dict__["_eet_encoder"].graphs
    rng = random.Random(f"{SEED}-{family}-graphs")
    # Batch 2 in bucket 32 (64 padded rows, capacities in steps of 8): 33, 37 and 38 real tokens all pack to 40 rows.
    for call, (seq, lengths) in enumerate(((20, [20, 13]), (27, [27, 10]), (32, [32, 6]))):
        inputs = _inputs(rng, family, lengths, seq)
        got, base, truth = _call_all(models, inputs)
        _check(got, base, truth, inputs["attention_mask"], torch.float16, f"call {call + 1}")
    assert (inner.captures, inner.replays) == (1, 2), (inner.captures, inner.replays)


# ------------------------------------------------------------------------------------------------ whole-model graphs


GRAPHED = [(family, _head(family, suffix)) for family in FAMILIES
           for suffix in ("Model", "ForSequenceClassification", "ForMultipleChoice")]


@pytest.mark.parametrize("family, head", GRAPHED, ids=[h for _, h in GRAPHED])
def test_whole_model_graphs_capture_and_replay(cuda_ops, family, head):
    models = _models(family, head, torch.float16)
    cache = models[0].__dict__[model_graphs.ATTR]
    inner = models[0].get_submodule(f"{models[0].base_model_prefix}.{RECORDS[family].encoder}"
                                    if models[0].base_model is not models[0] else RECORDS[family].encoder)
    rng = random.Random(f"{SEED}-{head}")
    choices = 2 if head.endswith("MultipleChoice") else None
    for call, expected in enumerate([(0, 0), (1, 1), (1, 2)]):
        inputs = _inputs(rng, family, _lengths(rng, 4, 24), 24, choices=choices)
        got, base, truth = _call_all(models, inputs)
        _check(got, base, truth, inputs["attention_mask"], torch.float16, f"call {call + 1}")
        assert (cache.captures, cache.replays) == expected, (call, cache.captures, cache.replays)
    # Positional, in the head's own order (RoBERTa's multiple choice head: input_ids, token_type_ids, mask).
    inputs = _inputs(rng, family, _lengths(rng, 4, 24), 24, choices=choices)
    args = [inputs[name] for name in cache.input_names]
    got, base, truth = _call_all(models, {}, *args)
    _check(got, base, truth, inputs["attention_mask"], torch.float16, "positional call")
    assert (cache.replays, cache.fallbacks) == (3, 0)
    assert inner.__dict__["_eet_encoder"].graphs.captures == 0  # the whole model's graph, not the encoder's


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_rewrites_nan_poisoned_static_outputs(cuda_ops, family):
    models = _models(family, RECORDS[family].vocab_heads[0], torch.float16)
    cache = models[0].__dict__[model_graphs.ATTR]
    rng = random.Random(f"{SEED}-{family}-poison")
    for _ in range(2):
        inputs = _inputs(rng, family, _lengths(rng, 2, 33), 33)
        kept, base, truth = _call_all(models, inputs)
    for name, static in next(iter(cache._entries.values())).outputs:
        assert static.data_ptr() != kept[name].data_ptr(), f"{name}: the static output itself was returned"
        static.view(torch.uint8).fill_(0xFF)  # NaN in fp16: the replay must rewrite every element
    _check(kept, base, truth, inputs["attention_mask"], torch.float16, "output returned before the poisoning")
    inputs = _inputs(rng, family, _lengths(rng, 2, 33), 33)
    got, base, truth = _call_all(models, inputs)
    _check(got, base, truth, inputs["attention_mask"], torch.float16, "replay after poisoning")
    assert cache.replays == 2


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_left_padding_on_a_captured_shape_gives_hfs_answer(cuda_ops, family):
    models = _models(family, RECORDS[family].heads[0], torch.float32)
    cache = models[0].__dict__[model_graphs.ATTR]
    rng = random.Random(f"{SEED}-{family}-left")
    for _ in range(2):
        _call_all(models, _inputs(rng, family, _lengths(rng, 3, 20), 20))
    assert cache.captures == 1
    inputs = _inputs(rng, family, [20, 7, 3], 20, side="left")
    got, base, truth = _call_all(models, inputs)
    _check(got, base, truth, inputs["attention_mask"], torch.float32, "left padding on a captured shape")
    assert (cache.replays, cache.fallbacks) == (2, 1), (cache.replays, cache.fallbacks)


# ------------------------------------------------------------------------------------------------ sentence-transformers


def test_sentence_transformers_encode_replays_whole_model_graphs(cuda_ops, tmp_path):
    """The embedded BERT as a SentenceTransformer (mean pooling), fp16 on CUDA: encode() through eet (whole-model
    graphs from the second encode on) within the flash-attention rule of plain sentence-transformers against fp32."""
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed on this image")
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from eet_hf.models import default_model_path, heldout_text_path

    transformer = Transformer(str(default_model_path("bert")), model_kwargs={"dtype": torch.float32})
    st.SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                           device="cpu").save(str(tmp_path))
    fp32 = st.SentenceTransformer(str(tmp_path), device="cuda")
    plain = st.SentenceTransformer(str(tmp_path), device="cuda").half()
    model = eet_hf.accelerate(st.SentenceTransformer(str(tmp_path), device="cuda").half())
    paragraphs = [" ".join(p.split()) for p in heldout_text_path().read_text().split("\n\n")]
    sentences = [p for p in paragraphs if p][:64]
    truth = fp32.encode(sentences, batch_size=16, convert_to_tensor=True).double()
    base = plain.encode(sentences, batch_size=16, convert_to_tensor=True)
    hf_err = (base.double() - truth).abs().max().item()
    for call in range(3):
        got = model.encode(sentences, batch_size=16, convert_to_tensor=True)
        assert torch.isfinite(got).all()
        err = (got.double() - truth).abs().max().item()
        assert err <= 2 * hf_err + 1e-3, f"encode {call + 1}: {err=:.3g} vs HF fp16 {hf_err:.3g}"
    cache = model[0].auto_model.__dict__[model_graphs.ATTR]
    assert cache.replays >= 4 and cache.fallbacks == 0, (cache.captures, cache.replays, cache.fallbacks)
