"""Shared fixtures: a deterministic seed for every test, a counter of packed-encoder calls."""

import pytest
import torch

import eet_hf.encoder.packed as packed

from .helpers import count_calls


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def packed_calls(monkeypatch) -> list[int]:
    """Counts calls of the packed encoder forward (eet_hf/encoder/packed.py): one per forward that took it."""
    return count_calls(monkeypatch, packed, "packed_forward")
