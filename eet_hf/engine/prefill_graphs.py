"""Prompts under CUDA graphs: the prefill forward replayed from a graph per (batch, prompt length).

A 128-token prompt through a 1B Llama is ~200 kernels; launched one by one from Python they cost several ms of
host time while the GPU needs about one, so time to first token was host-bound. The prefill of a (batch, length) is
captured on its second use and replayed from then on (one-off lengths never pay a capture); its first, eager use runs
the same shapes and kernels as the replays, so a prompt's answer does not depend on whether its graph existed yet.

Lengths are not rounded up to shared buckets by further left padding (one graph per range of lengths): see
docs/engine.md for why that was taken out and what it would take to bring it back.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from eet_hf._log import warn_once
from eet_hf.cuda_graphs import on_side_stream, warm_up_and_capture

from .decode_model import DecodeModel, StepBounds

# batch x length above which a prompt runs eagerly: there the kernels' time dwarfs their launches, and a graph's
# activations (kept in its memory pool between calls) would grow with the prompt.
MAX_GRAPH_TOKENS = 4096
MAX_GRAPHS = 4


def _graphable(batch: int, seq: int, device: torch.device) -> bool:
    return device.type == "cuda" and seq > 1 and batch * seq <= MAX_GRAPH_TOKENS


class _Captured:
    """One captured prefill: its static inputs, filled before each replay, and its output."""

    def __init__(self, batch: int, seq: int, device: torch.device) -> None:
        i32 = {"dtype": torch.int32, "device": device}
        self.tokens = torch.zeros(batch, seq, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, seq, dtype=torch.long, device=device)
        self.bounds = StepBounds(
            write_pos=torch.zeros(batch, **i32), kv_start=torch.zeros(batch, **i32),
            kv_end=torch.full((batch,), seq, **i32), q_offset=torch.zeros(batch, **i32),
        )
        self.graph = torch.cuda.CUDAGraph()
        self.logits: torch.Tensor | None = None

    def load(self, tokens: torch.Tensor, positions: torch.Tensor, pads: torch.Tensor) -> None:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.bounds.kv_start.copy_(pads)


class PrefillGraphs:
    """The prefill graphs of one decode engine (an LRU of MAX_GRAPHS, one memory pool), over its KV arena."""

    def __init__(self) -> None:
        # None: seen once (the next use captures); False: its capture failed (prompts of this key run eagerly).
        self._graphs: OrderedDict[tuple, _Captured | bool | None] = OrderedDict()
        self._pool = None

    def clear(self) -> None:
        """Drop every graph (the arena or the weights they captured moved)."""
        self._graphs.clear()
        self._pool = None

    def forward(self, w: DecodeModel, tokens: torch.Tensor, positions: torch.Tensor, pads: torch.Tensor,
                kv: torch.Tensor, padded: bool) -> torch.Tensor:
        """Logits [batch, vocab] of the prompt's last position; keys and values written to slots [0, seq).
        tokens, positions: [batch, seq]; pads: int32 [batch] left padding per row."""
        batch, seq = tokens.shape
        if not _graphable(batch, seq, tokens.device):
            return w.forward_last_logits(tokens, positions, kv, _bounds(pads, batch, seq), padded=padded)
        key = (batch, seq, padded, w.dtype, kv.data_ptr(), tuple(kv.shape))
        if key not in self._graphs:
            self._remember(key, None)  # first use: eager; the second captures
            # On the capture's stream: the cuBLAS workspace the capture needs is then made by this first call, not
            # inside the next one (GPT-2 at batch 1: 32 MiB over HF's peak in the call that captured).
            return on_side_stream(
                lambda: w.forward_last_logits(tokens, positions, kv, _bounds(pads, batch, seq), padded=padded),
                tokens.device)
        captured = self._graphs[key]
        self._graphs.move_to_end(key)
        if captured is None:
            captured = self._capture(w, key, tokens, positions, pads, kv, padded)
        if captured is False:
            return w.forward_last_logits(tokens, positions, kv, _bounds(pads, batch, seq), padded=padded)
        captured.load(tokens, positions, pads)
        captured.graph.replay()
        return captured.logits

    def _capture(self, w, key, tokens, positions, pads, kv, padded) -> _Captured | bool:
        batch, seq = tokens.shape
        captured = _Captured(batch, seq, tokens.device)
        captured.load(tokens, positions, pads)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            captured.logits = warm_up_and_capture(
                captured.graph, lambda: w.forward_last_logits(captured.tokens, captured.positions, kv, captured.bounds,
                                                              padded=padded),
                self._pool, tokens.device)
        except RuntimeError as error:  # something in this model's forward reads the host (a family's own code)
            warn_once(f"generate: the prompt's forward could not be captured in a CUDA graph ({error}); prompts "
                      "run eagerly")
            self._remember(key, False)
            self._pool = None
            return False
        self._remember(key, captured)
        return captured

    def _remember(self, key: tuple, value: _Captured | bool | None) -> None:
        self._graphs[key] = value
        self._graphs.move_to_end(key)
        while len(self._graphs) > MAX_GRAPHS * 2:  # graphs and once-seen keys together
            self._graphs.popitem(last=False)


def _bounds(pads: torch.Tensor, batch: int, seq: int) -> StepBounds:
    device = pads.device
    return StepBounds(
        write_pos=torch.zeros(batch, dtype=torch.int32, device=device), kv_start=pads,
        kv_end=torch.full((batch,), seq, dtype=torch.int32, device=device),
        q_offset=torch.zeros(batch, dtype=torch.int32, device=device),
    )
