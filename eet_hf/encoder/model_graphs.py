"""Whole-model CUDA graphs for encoder batches: embeddings, eet's mask, the packed encoder and the head
(pooler, MLM head, classifier, ...) replayed as one graph, so a forward pays one launch, not ~200, and no eager
Python between host reads.

At batch 1 x 128 a BERT forward is host-bound (issue #6: 1.45 ms wall for 0.58 ms of kernels): per call, eet's
mask function and the encoder's packing each read back to the host, and the embeddings and head run as eager
Python. Large batches lose the same way once a read drains the GPU: at bert-base 32 x 512 half-padded the eager
path around the encoder's own graph left the GPU idle ~1.5 ms of a 7 ms forward (~27 gaps between small kernels
launched one by one after each read; measured with a host-timeline probe, 2026-12-02, docs/encoder.md).
patches/encoder.py installs `graphed_forward` on the accelerated top-level model (BertModel, RobertaModel, ... or a
head of the family's record); it replays a graph for calls of the plain form

    model(input_ids, attention_mask=..., token_type_ids=...)       (position_ids=None, return_dict=True allowed)

(the inputs the family takes: DistilBERT has no token_type_ids; positional in the forward's own order)

on CUDA, in eval mode with autograd off (torch.no_grad / inference_mode), without autocast, with
input_ids.numel() <= max_tokens: graphs.MAX_TOKENS for heads with small outputs (base models, classifiers,
question answering), graphs.MODEL_MAX_TOKENS for heads whose outputs grow with the vocabulary (MLM logits of
tokens x vocab are static graph outputs: bert-base at 4096 tokens holds 250 MB in fp16). Anything else (labels,
inputs_embeds, output_hidden_states / output_attentions, other kwargs, config.return_dict=False, accelerate's
hooks, torch.compile or an outer capture) runs the model's own forward, as before.

Graphs: one per (input shape, input dtypes, device, which optional inputs were given, attention implementation,
weight storage signature = the address of every parameter and buffer, so model.to() / half() /
load_state_dict(assign=True) / a replaced submodule never replay a stale graph). A shape is captured on its 2nd
call (one-off shapes never pay a capture), graphs live in an LRU bounded in count and in the bytes of their static
inputs and outputs (graphs.MODEL_MAX_GRAPHS, MODEL_MAX_BYTES) and share one
memory pool. The static inputs are copied in before each replay; the static outputs are cloned out after it
(the next replay overwrites them).

The trade-off: inside a capture, eet's mask function and the packed encoder cannot read the mask on the host,
so they assume right padding (README: "under CUDA-graph capture"). A graph therefore gives HF's answer only for
masks that are one run of 1s from column 0 in every row (right padding, no padding, or an empty row) — what
tokenizers produce. To stay correct for any mask, the graph also computes, on the device, one bool "every row
is right-padded"; after the replay that bool is read back (the one host sync of the forward, at its end, where
the caller reads the output anyway) and when it is False the call runs the model's own eager forward, which
handles left padding and holes exactly (the replay's GPU time is then wasted). A call without a mask has no
sync at all. Captures are only made on a right-padded call.

Padding removal inside the graph: a graph packs a fixed number of token rows. Calls of several rows and at least
read_min_tokens tokens (READ_MIN_TOKENS: more than MODEL_MAX_TOKENS) read the mask
once *before* the replay: its real-token count picks the graph's row capacity (packing.capacity_for: the count
rounded up to an eighth of the batch, part of the key) and its right-paddedness is known up front, so a left-padded
call goes straight to the eager forward and a right-padded one needs no read after the replay. Smaller calls keep
every row and check the mask after the replay: on the H200 hosts of 2026-12-02 the read before the replay did not
pay there (bert-base 32 x 128 half-padded ran 1.6 ms of kernels instead of about 2 ms, yet its forward took 2.25 ms
against torch-compile-ro's 2.08, and 8 x 128 unpadded lost 0.3 ms; encoder-graphs-h200.md): the read exposes the
graph's launch (~0.3 ms of host time for ~180 nodes). Calls above MODEL_MAX_TOKENS had no whole-model graph before,
only the eager path with two reads, so reading once there is no loss. The encoder-level graphs (graphs.py) use the
same capacities: their caller reads the mask anyway.

The capture itself is behind a small backend interface (`CudaGraphBackend`: supports(device), capture(fn,
device) -> (replay, outputs)) so the routing, keys and fallbacks are tested on CPU with a fake backend.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers.utils import ModelOutput

from eet_hf._log import warn_once
from eet_hf.attention import _is_compiling
from eet_hf.cuda_graphs import warm_up_and_capture

from . import graphs
from .model_graph_keys import (
    INPUT_NAMES,
    ConfigView,
    OutputBuilder,
    WeightSignature,
    _tensor_output,
    fields_match,
    output_builder,
    padded_length,
    plain_inputs,
    right_padded,
)
from .packed import token_bounds
from .packing import capacity_for

# Tests set this False to reach the model's own forward (which serves every call a graph cannot take).
ENABLED = True
# Calls of at least this many tokens (and more than one row) read the mask before the replay; 0: never (module
# docstring): the calls larger than whole-model graphs of every head take.
READ_MIN_TOKENS = graphs.MODEL_MAX_TOKENS + 1
ATTR = "_eet_model_graphs"  # the model's ModelGraphs, set by patches/encoder.py

Outputs = tuple[ModelOutput, torch.Tensor | None]  # the captured forward's output and its "right-padded" flag


class GraphBackend(Protocol):
    def supports(self, device: torch.device) -> bool: ...

    def capture(self, fn: Callable[[], Outputs], device: torch.device) -> tuple[Callable[[], None], Outputs]:
        """Capture fn (after a warm-up run); returns (replay, fn's static outputs, rewritten by each replay)."""
        ...


class CudaGraphBackend:
    """torch.cuda.CUDAGraph captures sharing one memory pool: graphs replay one after another on one stream and
    their outputs are cloned right after each replay, so their intermediates may share memory."""

    def __init__(self) -> None:
        self._pool = None

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def capture(self, fn: Callable[[], Outputs], device: torch.device) -> tuple[Callable[[], None], Outputs]:
        with torch.cuda.device(device):
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            outputs = warm_up_and_capture(graph, fn, self._pool, device)
        return graph.replay, outputs


def _capacity_forward(runtime: Any, hidden: torch.Tensor, mask: Any, capacity: int | None = None) -> torch.Tensor:
    batch, seq_len = hidden.shape[:2]
    start, end = token_bounds(mask, batch, seq_len, hidden.device)
    return runtime._capacity_forward(hidden, start, end, capacity)


@contextlib.contextmanager
def capacity_mode(model: nn.Module, capacity: int | None = None) -> Iterator[None]:
    """The model's packed encoders take their capture-time path (fixed-shape capacity packing with `capacity`
    rows, default all, no host read, no encoder graph of their own) also outside a capture, so the warm-up
    before a capture runs the same kernels as the capture itself."""
    runtimes = [m.__dict__["_eet_encoder"] for m in model.modules() if "_eet_encoder" in m.__dict__]
    for runtime in runtimes:
        runtime.forward = functools.partial(_capacity_forward, runtime, capacity=capacity)
    try:
        yield
    finally:
        for runtime in runtimes:
            runtime.__dict__.pop("forward", None)


@dataclass
class _Entry:
    replay: Callable[[], None]
    inputs: dict[str, torch.Tensor]  # static input buffers, by argument name
    outputs: list[tuple[str, torch.Tensor]]  # the static output tensors, by field, in the output's order
    build: OutputBuilder  # the output object from (field, tensor) pairs
    ok: torch.Tensor | None  # bool scalar: the mask was right-padded (None: no mask)


class ModelGraphs:
    """Lazily captured, bounded whole-model CUDA graphs of one accelerated model's forward.

    seq_fields: the output fields with the input's sequence dimension (model_graph_keys.sequence_fields), or None:
    then a graph takes calls of its exact shape only. With them, a call with a mask is padded up to a multiple of
    seq_bucket tokens per row (padding: pad_id, mask 0, token type 0; never past max_positions) and those fields are
    cut back to its own length: sentence-transformers' encode() pads every batch to its own longest sentence, 157
    distinct shapes for 10,000 sentences of 8-256 tokens, which an LRU of exact shapes recaptured on every call."""

    def __init__(self, backend: GraphBackend | None = None, max_graphs: int = graphs.MODEL_MAX_GRAPHS,
                 max_tokens: int = graphs.MODEL_MAX_TOKENS, read_min_tokens: int = READ_MIN_TOKENS,
                 input_names: tuple[str, ...] = INPUT_NAMES, max_bytes: int = graphs.MODEL_MAX_BYTES,
                 seq_fields: frozenset[str] | None = None, seq_bucket: int = graphs.SEQ_BUCKET, pad_id: int = 0,
                 max_positions: int = 0) -> None:
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.input_names = input_names  # the tensors a plain call passes, in the forward's positional order
        self.seq_fields = seq_fields
        self.seq_bucket = seq_bucket
        self.max_positions = max_positions
        self.fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}  # a padded call's tail
        self.max_graphs = max_graphs
        self.max_bytes = max_bytes  # static inputs + outputs of all entries
        self.max_tokens = max_tokens
        self.read_min_tokens = read_min_tokens
        self.signature = WeightSignature()
        self.config_view = ConfigView()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._seen: set[tuple] = set()
        self._refused: set[tuple] = set()
        self._weights: tuple[int, ...] | None = None  # the signature the entries were captured with
        self.captures = 0  # for tests and reports
        self.replays = 0
        self.fallbacks = 0  # calls whose mask was not right-padded (found before or after a replay): eager forward

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict) -> ModelGraphs:
        # Graphs hold the original's weight addresses: a copy starts empty (and walks its own modules).
        return ModelGraphs(self.backend if not isinstance(self.backend, CudaGraphBackend) else None,
                           self.max_graphs, self.max_tokens, self.read_min_tokens, self.input_names, self.max_bytes,
                           self.seq_fields, self.seq_bucket, self.fill["input_ids"], self.max_positions)

    def eligible(self, model: nn.Module, ids: torch.Tensor) -> bool:
        """Whether this call may take a graph (cheap checks only; the call's form was checked by plain_inputs)."""
        return (
            ENABLED
            and graphs.ENABLED
            and self.max_graphs > 0
            and 0 < ids.numel() <= self.max_tokens
            and not model.training
            and not torch.is_grad_enabled()
            and self.backend.supports(ids.device)
            and not torch.is_autocast_enabled(ids.device.type)
            and "_hf_hook" not in model.__dict__
            and self.config_view(model.config)[0]
            and not _is_compiling()
        )

    def graph_length(self, inputs: dict[str, torch.Tensor]) -> int:
        """Tokens per row of the graph this call takes: its own, or padded up to the bucket (class docstring)."""
        ids = inputs["input_ids"]
        seq = ids.shape[-1]
        if self.seq_fields is None or "attention_mask" not in inputs:
            return seq
        length = padded_length(seq, self.seq_bucket, self.max_positions)
        return length if ids.numel() // seq * length <= self.max_tokens else seq

    def precheck(self, inputs: dict[str, torch.Tensor], length: int | None = None) -> tuple[bool, int] | None:
        """(mask right-padded, graph row capacity) from one host read of the mask, for calls large enough
        (module docstring); None for the others, which keep every row and check the mask after the replay.
        length: the graph's tokens per row (None: the call's own)."""
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        rows = ids.numel() // ids.shape[-1]
        length = ids.shape[-1] if length is None else length
        if mask is None or self.read_min_tokens <= 0 or rows * length < self.read_min_tokens or rows == 1:
            return None
        total, ok = torch.stack([(mask != 0).sum(), right_padded(mask).to(torch.int64)]).tolist()
        return bool(ok), capacity_for(int(total), rows * length)

    def key(self, model: nn.Module, inputs: dict[str, torch.Tensor], capacity: int | None = None,
            length: int | None = None) -> tuple:
        """The graph key; capacity: the packed rows (None: all of them); length: the graph's tokens per row (None:
        the call's own). The weight signature comes last."""
        ids = inputs["input_ids"]
        mask, types = inputs.get("attention_mask"), inputs.get("token_type_ids")
        weights = self.signature(model)
        if weights != self._weights:
            self._forget_stale(weights)
        shape = tuple(ids.shape) if length is None else (*ids.shape[:-1], length)
        return (shape, ids.dtype, ids.device, None if mask is None else mask.dtype,
                None if types is None else types.dtype, self.config_view(model.config)[1], capacity, weights)

    def _forget_stale(self, weights: tuple[int, ...]) -> None:
        """The weights moved (.to(), .half(), load_state_dict(assign=True)): graphs captured on the old ones can
        never replay again; free them (and their static buffers) now rather than when the LRU evicts them."""
        self._entries.clear()
        self._seen.clear()
        self._refused.clear()
        self._weights = weights

    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> ModelOutput | None:
        """The model's output for these inputs through a graph, or None when the caller must run the eager
        forward: the shape's first call, a refused shape, or a mask found not right-padded (before the replay by
        precheck, or after it)."""
        length = self.graph_length(inputs)
        checked = self.precheck(inputs, length)
        if checked is not None and not checked[0]:
            self.fallbacks += 1
            return None  # not right-padded: the eager forward, without a wasted replay
        capacity = None if checked is None else checked[1]
        key = self.key(model, inputs, capacity, length)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._first_calls(model, key, inputs, capacity, checked is not None, length)
            if entry is None:
                return None
        else:
            self._entries.move_to_end(key)
            for name, static in entry.inputs.items():
                self._copy_in(static, inputs[name], name)
        entry.replay()
        self.replays += 1
        # The static outputs are overwritten by the next replay: hand out copies, cut to the call's length.
        seq = inputs["input_ids"].shape[-1]
        dim = inputs["input_ids"].dim() - 1
        out = entry.build([(name, (static.narrow(dim, 0, seq) if seq != length and name in self.seq_fields
                                   else static).clone()) for name, static in entry.outputs])
        if checked is None and entry.ok is not None and not bool(entry.ok):  # the one host read, after the replay
            self.fallbacks += 1
            return None
        return out

    def _copy_in(self, static: torch.Tensor, value: torch.Tensor, name: str) -> None:
        """A call's input into a graph's static buffer, the tail past the call's length filled as padding."""
        seq = value.shape[-1]
        if seq == static.shape[-1]:
            static.copy_(value)
        else:
            static[..., :seq].copy_(value)
            static[..., seq:].fill_(self.fill[name])

    def _first_calls(self, model: nn.Module, key: tuple, inputs: dict[str, torch.Tensor], capacity: int | None,
                     checked: bool, length: int) -> _Entry | None:
        """None for a shape's first call (remembered) or a refused one; else the entry captured now. checked:
        the mask is known to be right-padded (precheck)."""
        if key in self._refused:
            return None
        if key not in self._seen:
            if len(self._seen) > 4096:  # bounded like the graphs: forget one-off shapes
                self._seen.clear()
            self._seen.add(key)
            return None
        mask = inputs.get("attention_mask")
        if mask is not None and not checked and not bool(right_padded(mask)):
            return None  # capture on a call the graph computes correctly; this one runs eagerly
        return self._capture(model, key, inputs, capacity, length)

    def _capture(self, model: nn.Module, key: tuple, inputs: dict[str, torch.Tensor], capacity: int | None,
                 length: int) -> _Entry | None:
        while len(self._entries) >= self.max_graphs:
            self._entries.popitem(last=False)
        with torch.inference_mode(False):  # static buffers stay writable outside inference_mode
            static = {}
            for name, t in inputs.items():
                static[name] = torch.empty((*t.shape[:-1], length), dtype=t.dtype, device=t.device)
                self._copy_in(static[name], t, name)
        forward = type(model).forward

        def captured() -> Outputs:
            with capacity_mode(model, capacity):
                out = forward(model, **static)
            mask = static.get("attention_mask")
            return out, None if mask is None else right_padded(mask)

        try:
            with torch.no_grad():
                replay, (outputs, ok) = self.backend.capture(captured, inputs["input_ids"].device)
        except Exception as exc:  # noqa: BLE001 - e.g. an op that syncs inside capture: this shape stays eager
            warn_once(f"whole-model CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:200]}): "
                      "the model's own forward runs for that shape")
            self._refused.add(key)
            return None
        if not _tensor_output(outputs):
            warn_once(f"whole-model CUDA graphs: {type(model).__name__} returned {type(outputs).__name__} with "
                      "non-tensor fields: the model's own forward runs")
            self._refused.add(key)
            return None
        if self.seq_fields is not None and not fields_match(outputs, self.seq_fields, static["input_ids"].shape):
            warn_once(f"whole-model CUDA graphs: {type(model).__name__}'s outputs with a sequence dimension are not "
                      f"{sorted(self.seq_fields)}: its graphs take calls of their exact length only")
            self.seq_fields = None  # keys of padded lengths are never made again
            self._refused.add(key)
            return None
        entry = _Entry(replay, static, list(outputs.items()), output_builder(outputs), ok)
        # The warm-up may have re-packed weights (the encoder's QKV after a dtype move): key by the addresses
        # the graph was captured with.
        weights = self.signature(model)
        if weights != self._weights:
            self._forget_stale(weights)
        self._entries[key[:-1] + (weights,)] = entry
        self.captures += 1
        while len(self._entries) > 1 and self.static_bytes() > self.max_bytes:  # the newest entry always stays
            self._entries.popitem(last=False)
        return entry

    def static_bytes(self) -> int:
        """Bytes of the entries' static inputs and outputs (their intermediates share one pool)."""
        return sum(t.numel() * t.element_size() for entry in self._entries.values()
                   for t in (*entry.inputs.values(), *(tensor for _, tensor in entry.outputs)))


def graphed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The top-level model's forward through a whole-model CUDA graph where eligible, else its own forward."""
    cache = self.__dict__.get(ATTR)
    # Under torch.compile the model's own forward is traced (dynamo would only graph-break on the cache).
    inputs = (plain_inputs(args, kwargs, cache.input_names) if cache is not None and not torch.compiler.is_compiling()
              else None)
    if inputs is not None and cache.eligible(self, inputs["input_ids"]):
        out = cache.run(self, inputs)
        if out is not None:
            return out
    return type(self).forward(self, *args, **kwargs)
