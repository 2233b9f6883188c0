"""Embedded default models: tiny GPT-2, Llama and BERT trained on stdlib docstrings (see TRAINING.md here).

Weights are stored in float16 (config says so); pass `dtype=torch.float32` to `from_pretrained` on CPU.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_FAMILIES = {"gpt2": "gpt2-tiny", "bert": "bert-tiny", "llama": "llama-tiny"}


def default_model_path(family: str) -> Path:
    """Directory of the embedded model for `family` ("gpt2", "llama" or "bert"), loadable with `from_pretrained`."""
    try:
        return _HERE / _FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(_FAMILIES)}") from None


def heldout_text_path() -> Path:
    """Held-out docstrings (never trained on), one text file, for the perplexity suite."""
    return _HERE / "heldout.txt"
