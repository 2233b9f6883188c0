"""KV cache storage: a preallocated arena for the fast decode loop, and a growable HF `Cache` for HF's own loops.

EET's dynamic memory manager preallocates the cache for the whole request instead of growing it token by token.
`KVArena` is one flat allocation per model, viewed as [layers, 2, batch, heads, capacity, head_dim] for each
request; it grows only when a larger request arrives, so CUDA graphs captured over its views stay valid.
`EetCache` gives the same preallocation to HF's generate and to users' own `past_key_values` loops: each layer
writes new tokens into a buffer with spare capacity and returns views, where HF's DynamicCache concatenates
(a new allocation and a full copy per token per layer).
"""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Capacity grows in steps of this many tokens, so nearby request sizes share one arena view and its graphs.
CAPACITY_STEP = 64


def round_capacity(tokens: int) -> int:
    return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP


class KVArena:
    """One flat buffer holding every layer's keys and values for the fast decode loop."""

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None
        self.generation = 0  # bumped on every reallocation: graphs over older views are stale

    @property
    def nbytes(self) -> int:
        return 0 if self._flat is None else self._flat.numel() * self._flat.element_size()

    def view(
        self, layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype,
        device: torch.device,
    ) -> torch.Tensor:
        """[layers, 2, batch, heads, capacity, head_dim] over the arena, reallocating only when it is too small."""
        numel = layers * 2 * batch * heads * capacity * head_dim
        flat = self._flat
        if flat is None or flat.numel() < numel or flat.dtype != dtype or flat.device != device:
            self._flat = None  # free the old one before allocating the new one: peak memory is the larger alone
            self._flat = torch.empty(numel, dtype=dtype, device=device)
            self.generation += 1
        return self._flat[:numel].view(layers, 2, batch, heads, capacity, head_dim)

    def release(self) -> None:
        self._flat = None
        self.generation += 1


def required_bytes(layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype) -> int:
    return layers * 2 * batch * heads * capacity * head_dim * torch.empty((), dtype=dtype).element_size()


class EetCacheLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of a buffer with spare capacity: appending a token writes in
    place; the buffer doubles when full (amortized O(1) copies instead of HF's copy per token)."""

    def __init__(self, reserve: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reserve = reserve
        self._k_buf: torch.Tensor | None = None
        self._v_buf: torch.Tensor | None = None
        self._length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._length = 0
        self._k_buf = self._v_buf = None
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.is_initialized = True

    def _ensure_capacity(self, needed: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        capacity = 0 if self._k_buf is None else self._k_buf.shape[-2]
        if needed <= capacity and self._k_buf.shape[0] == like_k.shape[0]:
            return
        new_capacity = round_capacity(max(needed, 2 * capacity, self.reserve))
        k_buf = like_k.new_empty((*like_k.shape[:-2], new_capacity, like_k.shape[-1]))
        v_buf = like_v.new_empty((*like_v.shape[:-2], new_capacity, like_v.shape[-1]))
        if self._length:
            k_buf[..., : self._length, :] = self.keys
            v_buf[..., : self._length, :] = self.values
        self._k_buf, self._v_buf = k_buf, v_buf

    def _set_length(self, length: int) -> None:
        self._length = length
        self.keys = self._k_buf[..., :length, :]
        self.values = self._v_buf[..., :length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._length, self._length + key_states.shape[-2]
        self._ensure_capacity(end, key_states, value_states)
        self._k_buf[..., start:end, :] = key_states
        self._v_buf[..., start:end, :] = value_states
        self._set_length(end)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def reset(self) -> None:
        self._k_buf = self._v_buf = None
        self._length = 0
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"EetCacheLayer.crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._set_length(max(self._length + tokens_to_remove, 0))

    def _replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        # Batch reshuffles (beam search, batch selection) change the batch size: rebuild the buffer around them.
        self._k_buf = self._v_buf = None
        self._length = 0
        self._ensure_capacity(keys.shape[-2], keys, values)
        self._k_buf[..., : keys.shape[-2], :] = keys
        self._v_buf[..., : values.shape[-2], :] = values
        self._set_length(keys.shape[-2])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._replace(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._replace(self.keys[indices, ...], self.values[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() > 0:
            idx = beam_idx.to(self.keys.device)
            self._replace(self.keys.index_select(0, idx), self.values.index_select(0, idx))

    def offload(self) -> None:
        raise NotImplementedError("EetCache does not offload to the CPU; use HF's DynamicCache(offloading=True)")

    @property
    def capacity(self) -> int:
        return 0 if self._k_buf is None else self._k_buf.shape[-2]

    @property
    def nbytes(self) -> int:
        if self._k_buf is None:
            return 0
        return 2 * self._k_buf.numel() * self._k_buf.element_size()


class EetCache(Cache):
    """HF `Cache` with preallocated, growable per-layer buffers. `reserve` (tokens) sizes the first allocation,
    e.g. prompt length + max_new_tokens, so a whole generate call allocates once per layer.

        cache = EetCache(reserve=prompt_len + max_new_tokens)
        model(input_ids, past_key_values=cache)   # or positionally; generate(..., past_key_values=cache)
    """

    def __init__(self, reserve: int = 0) -> None:
        super().__init__(layers=None, layer_class_to_replicate=functools.partial(EetCacheLayer, reserve=reserve))
        self.reserve = reserve

    @property
    def nbytes(self) -> int:
        """Bytes held by the key/value buffers (capacity, not just the filled part)."""
        return sum(layer.nbytes for layer in self.layers)

    def __repr__(self) -> str:
        filled = self.get_seq_length() if self.layers else 0
        return f"EetCache(layers={len(self.layers)}, tokens={filled}, bytes={self.nbytes})"
