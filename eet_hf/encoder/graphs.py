"""CUDA graphs for encoder batches: one launch per forward instead of ~100 from Python, which set the time of small
batches everywhere and of large ones on a slow host.

One graph per (batch, padded-length bucket, token capacity, dtype, device): the input is copied into a static
[batch, bucket, hidden] buffer, the real-token bounds into static int32 vectors, and the captured packed forward
(capacity mode: a fixed shape, no host read) replays. The token capacity is the batch's real-token count rounded
up to an eighth of batch * bucket (packing.capacity_for), so the GEMMs of a graph skip most of the padding too
(a half-padded batch runs 3/4 of the rows, not all of them). A shape is captured on its 2nd call (one-off shapes
never pay a capture), graphs live in an LRU bounded in count and static bytes (and tokens per graph), and all share
one memory pool: they run one after another on one stream, so their intermediates may share memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from eet_hf.cuda_graphs import warm_up_and_capture

from .packing import capacity_for

# Encoder batches up to this many padded tokens (batch * bucket) take graphs. With the token capacity in the
# key, a graph skips the padding as the eager packed path does (within 1/8 of the batch), and it spares the host
# the ~100 launches per forward: on a slow host the eager path of bert-base 32 x 512 half padded was host-bound
# (8.8 ms there, 6.85 ms on a faster host; 7.5 ms with graphs on a slow one: encoder-graphs-h200.md). The cost is memory: each graph holds static
# [batch, bucket, hidden] input and output buffers; intermediates share one pool.
MAX_TOKENS = 32768
# Whole-model graphs (model_graphs.py) of heads whose outputs grow with the vocabulary stop lower: their static
# outputs include e.g. MLM logits of tokens x vocab (bert-base at 4096 tokens: 250 MB in fp16). Other heads take
# whole-model graphs up to MAX_TOKENS (patches/encoder.py).
MODEL_MAX_TOKENS = 4096
# Per encoder, an LRU bounded in count and in the bytes of the graphs' static [batch, bucket, hidden] inputs and outputs
# (up to 50 MB each for bert-base at 64 x 256): sentence-transformers' encode() on mixed lengths (8-256 tokens, batch
# 64) makes ~8 (batch, bucket, capacity) keys above MODEL_MAX_TOKENS, so 8 graphs left no room for another mix.
MAX_GRAPHS = 16
MAX_BYTES = 512 * 2**20
# Whole-model graphs (model_graphs.py) are per input shape, lengths padded up to SEQ_BUCKET where the head allows:
# sentence-transformers' encode() of 10,000 sentences of 8-256 tokens at batch 64 then needs 16 lengths, more with the
# token capacities of the calls that read the mask first. Their static buffers are small (at most MAX_TOKENS x hidden
# per output), so many fit: a count cap and a byte cap on the static inputs and outputs, whichever binds first.
MODEL_MAX_GRAPHS = 64
MODEL_MAX_BYTES = 512 * 2**20
# Whole-model graphs of heads whose output fields are known (model_graph_keys.sequence_fields) take a call padded to
# the next multiple of this many tokens per row: one graph serves 16 lengths. A padded row costs little: it is a
# segment of its own in the packed layout, skipped by attention and, for calls large enough to read the mask, by the
# GEMMs too (capacity packing); below that the forward is bound by launches, not rows.
SEQ_BUCKET = 16
# Tests set this False to reach the eager packed path (which serves every call a graph cannot take).
ENABLED = True
MIN_BUCKET = 16

PackedForward = Callable[..., torch.Tensor]  # fn(hidden, start, end, capacity=rows) -> hidden


def bucket_for(seq_len: int) -> int:
    """Padded length a sequence length is captured at: the next power of two, at least MIN_BUCKET."""
    bucket = MIN_BUCKET
    while bucket < seq_len:
        bucket *= 2
    return bucket


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor  # [batch, bucket, hidden] static input
    start: torch.Tensor  # int32 [batch]
    end: torch.Tensor  # int32 [batch]
    out: torch.Tensor  # [batch, bucket, hidden] static output


class GraphCache:
    """Lazily captured, bounded per-shape CUDA graphs of one encoder's packed forward."""

    def __init__(self, max_graphs: int = MAX_GRAPHS, max_tokens: int = MAX_TOKENS, max_bytes: int = MAX_BYTES) -> None:
        self.max_graphs = max_graphs
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._seen: set[tuple] = set()
        self._pool = None
        self.captures = 0  # for tests and reports
        self.replays = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def eligible(self, hidden: torch.Tensor) -> bool:
        batch, seq_len = hidden.shape[:2]
        return (
            ENABLED
            and self.max_graphs > 0
            and hidden.is_cuda
            and batch * bucket_for(seq_len) <= self.max_tokens
            and not torch.cuda.is_current_stream_capturing()
        )

    def run(self, fn: PackedForward, hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
            weights: tuple = (), total: int | None = None) -> torch.Tensor | None:
        """fn's output for this batch through a graph: None on a shape's first call (the caller runs eagerly).

        hidden: [batch, seq_len, hidden]; start, end: int [batch], the real-token run of each row;
        fn(hidden [batch, bucket, hidden], start, end, capacity=rows) -> [batch, bucket, hidden]; weights:
        anything that changes when fn's weights move (their addresses), part of the key; total: the batch's
        real tokens (None: unknown, the capacity is then all batch * bucket rows).
        """
        batch, seq_len, width = hidden.shape
        bucket = bucket_for(seq_len)
        padded = batch * bucket
        capacity = padded if total is None else capacity_for(total, padded)
        key = (batch, bucket, capacity, width, hidden.dtype, hidden.device, weights)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen:
                if len(self._seen) > 4096:  # bounded like the graphs: forget one-off shapes
                    self._seen.clear()
                self._seen.add(key)
                return None
            entry = self._capture(fn, key, hidden, start, end)
        self._graphs.move_to_end(key)
        self._load(entry, hidden, start, end)
        entry.graph.replay()
        self.replays += 1
        # The static output is overwritten by the next replay: hand out a copy.
        return entry.out[:, :seq_len].clone()

    @staticmethod
    def _load(entry: _Graph, hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> None:
        seq_len = hidden.shape[1]
        # Positions past seq_len keep earlier (finite) values; they lie outside every real-token run.
        entry.hidden[:, :seq_len].copy_(hidden)
        entry.start.copy_(start)
        entry.end.copy_(end)

    def _capture(self, fn: PackedForward, key: tuple, hidden: torch.Tensor, start: torch.Tensor,
                 end: torch.Tensor) -> _Graph:
        batch, bucket, capacity, width, dtype, device = key[:6]
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Normal tensors even when this call runs under inference_mode: a later call under no_grad copies into them,
        # which an inference tensor refuses ("Inplace update to inference tensor outside InferenceMode").
        with torch.inference_mode(False):
            static_hidden = torch.zeros(batch, bucket, width, dtype=dtype, device=device)
            static_start = torch.zeros(batch, dtype=torch.int32, device=device)
            static_end = torch.zeros(batch, dtype=torch.int32, device=device)
        entry = _Graph(torch.cuda.CUDAGraph(), static_hidden, static_start, static_end, static_hidden)
        self._load(entry, hidden, start, end)
        with torch.no_grad():
            entry.out = warm_up_and_capture(
                entry.graph, lambda: fn(static_hidden, static_start, static_end, capacity=capacity), self._pool, device)
        self._graphs[key] = entry
        self.captures += 1
        while len(self._graphs) > 1 and self.static_bytes() > self.max_bytes:  # the newest graph always stays
            self._graphs.popitem(last=False)
        return entry

    def static_bytes(self) -> int:
        """Bytes of the graphs' static inputs and outputs (their intermediates share one pool)."""
        total = 0
        for g in self._graphs.values():
            total += g.hidden.numel() * g.hidden.element_size()
            if g.out is not g.hidden:
                total += g.out.numel() * g.out.element_size()
        return total
