"""Shared fixtures: a deterministic seed for every test, a counter of packed-encoder calls."""

import pytest
import torch

import eet_hf.encoder.packed as packed


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def packed_calls(monkeypatch):
    """Counts calls of the packed encoder forward (eet_hf/encoder/packed.py): one per forward that took it."""
    calls = []
    original = packed.packed_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(packed, "packed_forward", counting)
    return calls
