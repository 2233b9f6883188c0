"""Evaluation suites for eet_hf: parity (`python -m evaluation.parity`) and perplexity
(`python -m evaluation.perplexity`). Results go to evaluation/results/ via `evaluation.results_io`."""
