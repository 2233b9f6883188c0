"""The fast generate loop: prefill, then decode steps replayed from CUDA graphs (any DecodeModel).

Everything a step needs — the token fed, its position, the cache slot it writes, the visible key range, the
new-token counter, which sequences finished — lives in device tensors of a `DecodeState`, and the step itself
advances them. So one captured graph serves every step of every call with the same (batch, cache capacity,
policy), and the loop needs no host sync per step: the host looks at "anyone unfinished?" every
`STOP_CHECK_EVERY` steps through a pinned buffer, a few steps late, and the result is trimmed to the exact
length HF's loop would have stopped at.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from eet_hf.cuda_graphs import warm_up_and_capture

from . import prefill_graphs
from .decode_model import DecodeModel, StepBounds
from .kv_cache import KVArena, required_bytes, round_capacity
from .policy import DecodePolicy, PolicyRunner

STOP_CHECK_EVERY = 8
MAX_GRAPHS = 8


class DecodeState:
    """Static device tensors that one decode step (and the graph captured from it) reads and advances."""

    def __init__(self, batch: int, capacity: int, vocab: int, device: torch.device, policy: DecodePolicy,
                 keep_scores: bool, keep_logits: bool) -> None:
        i32 = {"dtype": torch.int32, "device": device}
        i64 = {"dtype": torch.long, "device": device}
        self.batch = batch
        self.tokens = torch.zeros(batch, 1, **i64)  # the token fed to the next step
        # Everything that advances by one per step, in one tensor so that one add advances it all: the cache slot
        # written, the end of the visible keys, the query's offset, the position id.
        self.counters = torch.zeros(4, batch, **i32)
        self.positions = self.counters[3].view(batch, 1)
        self.bounds = StepBounds(
            write_pos=self.counters[0], kv_start=torch.zeros(batch, **i32), kv_end=self.counters[1],
            q_offset=self.counters[2],
        )
        self.step = torch.zeros(1, **i64)  # new tokens chosen so far
        self.live_steps = torch.zeros(1, **i64)  # steps after which some sequence was still unfinished
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        self.out = torch.zeros(batch, capacity, **i64)  # chosen tokens, by new-token index
        self.seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device) if policy.uses_seen else None
        self.scores = torch.zeros(batch, vocab, dtype=torch.float32, device=device) if keep_scores else None
        self.logits = torch.zeros(batch, vocab, dtype=torch.float32, device=device) if keep_logits else None

    def reset(self, input_ids: torch.Tensor, pads: torch.Tensor, last_positions: torch.Tensor,
              seen_from: torch.Tensor | None) -> None:
        """Set up for the first decode step after a prompt of input_ids.shape[1] tokens (pads: int32 [batch])."""
        prompt_len = input_ids.shape[1]
        self.positions.copy_(last_positions.view(-1, 1) + 1)
        self.bounds.write_pos.fill_(prompt_len)
        self.bounds.kv_start.copy_(pads)
        self.bounds.kv_end.fill_(prompt_len + 1)
        self.bounds.q_offset.fill_(prompt_len)
        self.step.zero_()
        self.live_steps.zero_()
        self.unfinished.fill_(True)
        if self.seen is not None:
            # HF's repetition penalty looks at the ids in input_ids from seen_from on (all of them when None);
            # ids before it are redirected to a spare column that is dropped.
            vocab = self.seen.shape[1]
            ids = input_ids
            if seen_from is not None:
                start = seen_from.to(ids.device).view(-1, 1)
                ids = ids.masked_fill(torch.arange(prompt_len, device=ids.device)[None, :] < start, vocab)
            seen = torch.zeros(self.batch, vocab + 1, dtype=torch.bool, device=ids.device)
            self.seen.copy_(seen.scatter_(1, ids, True)[:, :vocab])


@dataclass
class DecodeResult:
    new_tokens: torch.Tensor  # [batch, n] int64
    scores: list[torch.Tensor] | None  # n × [batch, vocab] fp32, processed (HF's output_scores)
    logits: list[torch.Tensor] | None  # n × [batch, vocab] fp32, raw (HF's output_logits)
    kv: torch.Tensor  # [layers, 2, batch, kv_heads, capacity, head_dim]; the first prompt_len + n - 1 slots filled


class DecodeEngine:
    """Per accelerated model: the KV arena, the captured decode graphs, and the loop."""

    def __init__(self) -> None:
        self.arena = KVArena()
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, DecodeState, PolicyRunner]] = OrderedDict()
        self._pool = None
        self._weights: tuple = ()
        self.prefill = prefill_graphs.PrefillGraphs()
        self.stats = {"calls": 0, "graphs_captured": 0, "graph_replays": 0, "eager_steps": 0}
        # Requests that already ran with the arena as it is: they need no memory they did not get then.
        self._fitted: set[tuple] = set()

    # ------------------------------------------------------------------ memory manager
    def memory_report(self) -> dict[str, int]:
        """What the engine holds: KV arena bytes and the number of captured decode graphs."""
        return {"kv_arena_bytes": self.arena.nbytes, "graphs": len(self._graphs)}

    def _check_fits(self, w: DecodeModel, batch: int, prompt_len: int, capacity: int, device: torch.device) -> None:
        """Raise before any kernel runs when the request cannot fit in free GPU memory. Skipped for a request of a
        shape that already ran over the same arena on the same device (its cache and its graphs' memory are held):
        the driver query and the allocator's statistics were 0.7 of ~9.6 ms per call under cProfile (llama-1b,
        batch 1, H100), a call whose time to first token is host-bound."""
        if device.type != "cuda":
            return
        kv_bytes = required_bytes(w.num_layers, batch, w.kv_heads, capacity, w.head_dim, w.dtype)
        element = torch.empty((), dtype=w.dtype).element_size()
        # Prompt activations: qkv, attention, MLP inner (4x) and residual streams, plus fp32 logits.
        act_bytes = batch * prompt_len * w.width * 12 * element + batch * w.vocab * 4 * 4
        free, _ = torch.cuda.mem_get_info(device)
        # The nested stats as the allocator reports them: memory_reserved() / memory_allocated() flatten the whole
        # dict first (~0.3 ms of every call's time to first token).
        stats = torch.cuda.memory_stats_as_nested_dict(device)
        current = {key: stats.get(key, {}).get("all", {}).get("current", 0) for key in ("reserved_bytes",
                                                                                        "allocated_bytes")}
        reusable = current["reserved_bytes"] - current["allocated_bytes"] + self.arena.nbytes
        need = kv_bytes + act_bytes
        if need > free + reusable:
            raise torch.OutOfMemoryError(
                f"eet_hf generate: batch {batch} × {capacity} cached tokens needs {need / 2**30:.2f} GiB "
                f"(KV cache {kv_bytes / 2**30:.2f} GiB) but only {(free + reusable) / 2**30:.2f} GiB is free on "
                f"{device}; lower the batch size or max_new_tokens. Nothing was run."
            )

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def run(self, w: DecodeModel, input_ids: torch.Tensor, pads: torch.Tensor, has_padding: bool,
            position_ids: torch.Tensor, policy: DecodePolicy, keep_scores: bool, keep_logits: bool,
            weights: tuple | None = None) -> DecodeResult:
        """input_ids: [batch, prompt] left-padded; pads: int32 [batch] padding per row (has_padding: any > 0);
        position_ids: [batch, prompt] (HF's: cumsum of the mask); weights: the caller's signature of the tensors
        `w` reads, when it has one (else w.storage_signature()). Returns up to policy.max_new_tokens new tokens
        per row."""
        self.stats["calls"] += 1
        device = w.device
        batch, prompt_len = input_ids.shape
        max_new = policy.max_new_tokens
        capacity = round_capacity(prompt_len + max_new)
        fit_key = (batch, prompt_len, capacity, device, w.dtype, w.num_layers, w.kv_heads, w.head_dim, w.width, w.vocab)
        if (fit_key, self.arena.generation) not in self._fitted:
            self._check_fits(w, batch, prompt_len, capacity, device)
        generation = self.arena.generation
        kv = self.arena.view(w.num_layers, batch, w.kv_heads, capacity, w.head_dim, w.dtype, device)
        weights = w.storage_signature() if weights is None else weights
        if self.arena.generation != generation or weights != self._weights:
            # They captured views of the old arena, or weights that have since moved. Their memory pool goes with
            # them: capturing into a pool whose last graph was destroyed trips an allocator assert.
            self._graphs.clear()
            self._pool = None
            self.prefill.clear()
            self._weights = weights

        graph, state, runner = self._state_for(w, batch, capacity, device, policy, keep_scores, keep_logits)
        # Prompt: all tokens at once, written to slots [0, prompt_len) (from a CUDA graph where one was captured).
        logits = self.prefill.forward(w, input_ids, position_ids, pads, kv, padded=has_padding)
        if len(self._fitted) > 64:
            self._fitted.clear()
        self._fitted.add((fit_key, self.arena.generation))
        state.reset(input_ids, pads, position_ids[:, -1], policy.seen_from)
        scores, raw = [], []
        self._select(logits, state, runner)
        self._keep(state, scores, raw)

        pending: list[tuple[torch.cuda.Event | None, torch.Tensor]] = []
        for step in range(1, max_new):
            if graph is None and device.type == "cuda":
                graph = self._capture(w, kv, state, runner, batch, capacity, policy, keep_scores, keep_logits)
            elif graph is not None:
                graph.replay()
                self.stats["graph_replays"] += 1
            else:
                self._step(w, kv, state, runner)
                self.stats["eager_steps"] += 1
            self._keep(state, scores, raw)
            if policy.eos is not None and self._all_finished(step, state, pending, device):
                break
        n = max_new if policy.eos is None else min(max_new, int(state.live_steps.item()) + 1)
        return DecodeResult(
            new_tokens=state.out[:, :n].clone(),
            scores=scores[:n] if keep_scores else None,
            logits=raw[:n] if keep_logits else None,
            kv=kv,
        )

    def _all_finished(self, step: int, state: DecodeState, pending: list, device: torch.device) -> bool:
        """True once every sequence finished, seen a few steps late on CUDA (no stall), at once on the CPU."""
        if device.type != "cuda":
            return not bool(state.unfinished.any())
        if step % STOP_CHECK_EVERY == 0:
            flag = torch.empty(1, dtype=torch.bool, pin_memory=True)
            flag.copy_(state.unfinished.any().view(1), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            pending.append((event, flag))
        if pending and pending[0][0].query():
            _, flag = pending.pop(0)
            return not bool(flag[0])
        return False

    @staticmethod
    def _keep(state: DecodeState, scores: list, raw: list) -> None:
        if state.scores is not None:
            scores.append(state.scores.clone())
        if state.logits is not None:
            raw.append(state.logits.clone())

    # ------------------------------------------------------------------ one step
    @staticmethod
    def _select(logits: torch.Tensor, state: DecodeState, runner: PolicyRunner) -> None:
        """HF's token choice for one step, on the device: processors, argmax/sample, pad after eos, stop flags."""
        policy = runner.policy
        # argmax over fp16/bf16 logits picks what it picks over their exact fp32 copies: the copy only when used.
        plain = not policy.steps and not policy.do_sample and state.scores is None and state.logits is None
        raw = logits if plain else logits.float()
        scores = runner.apply(raw, state.step, state.seen)
        chosen = runner.choose(scores)
        if runner.eos is not None:
            chosen = torch.where(state.unfinished, chosen, torch.full_like(chosen, policy.pad))
        state.out.scatter_(1, state.step.view(1, 1).expand(state.batch, 1), chosen.view(-1, 1))
        if runner.eos is not None:
            state.unfinished &= ~torch.isin(chosen, runner.eos)
            state.live_steps += state.unfinished.any().long()
        if state.seen is not None:
            state.seen.scatter_(1, chosen.view(-1, 1), True)
        if state.scores is not None:
            state.scores.copy_(scores)
        if state.logits is not None:
            state.logits.copy_(raw)
        state.tokens.copy_(chosen.view(-1, 1))
        state.step += 1

    def _step(self, w: DecodeModel, kv: torch.Tensor, state: DecodeState, runner: PolicyRunner) -> None:
        logits = w.forward_last_logits(state.tokens, state.positions, kv, state.bounds)
        self._select(logits, state, runner)
        state.counters += 1

    # ------------------------------------------------------------------ graphs
    def _key(self, batch, capacity, policy, keep_scores, keep_logits) -> tuple:
        return (batch, capacity, policy.signature(), keep_scores, keep_logits, self.arena.generation)

    def _state_for(self, w, batch, capacity, device, policy, keep_scores, keep_logits):
        key = self._key(batch, capacity, policy, keep_scores, keep_logits)
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        state = DecodeState(batch, capacity, w.vocab, device, policy, keep_scores, keep_logits)
        return None, state, PolicyRunner(policy, w.vocab, device)

    def _capture(self, w, kv, state, runner, batch, capacity, policy, keep_scores, keep_logits):
        """Run this step eagerly once (it is the call's first step), then capture the step body; later steps and
        calls with the same key replay it."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        warm_up_and_capture(graph, lambda: self._step(w, kv, state, runner), self._pool, kv.device)
        self.stats["eager_steps"] += 1
        self.stats["graphs_captured"] += 1
        key = self._key(batch, capacity, policy, keep_scores, keep_logits)
        self._graphs[key] = (graph, state, runner)
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return graph
