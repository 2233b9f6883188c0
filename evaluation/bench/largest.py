"""The largest GPT-3-shaped model that generates 128 tokens at batch 1 (part of suite `memory`).

Bounded search: candidates are GPT-3 paper shapes, then larger ones; each is estimated BEFORE anything is
allocated (fp16 weights + KV cache + prefill activations + a margin, against torch.cuda.mem_get_info), the
largest that fits is tried first and, on torch.OutOfMemoryError or any other failure, the next smaller one —
at most MAX_ATTEMPTS per engine. Weights are allocated without CPU init (shapes.build_empty).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel

from ..results_io import make_row as row
from . import engines as E
from . import shapes as S
from .context import RunContext
from .output import error_row
from .timing import free_memory, peak_gib, reset_peak

CASE = "largest-gpt"
MAX_ATTEMPTS = 4
VOCAB, POSITIONS = 50257, 2048


@dataclass(frozen=True)
class Candidate:
    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int = VOCAB
    positions: int = POSITIONS

    def params(self) -> int:
        """GPT-2-style block: QKV + proj + 2 MLP matrices (12 d^2) with biases and 2 LayerNorms (13 d)."""
        d = self.hidden
        return self.layers * (12 * d * d + 13 * d) + (self.vocab + self.positions) * d + 2 * d

    def estimate_bytes(self, elem: int, batch: int, tokens: int, prompt: int, margin: int) -> int:
        weights = self.params() * elem
        kv = 2 * self.layers * batch * tokens * self.hidden * elem
        # Prefill's widest live activations (QKV, MLP 4d, residual) twice over, plus fp32 last-token logits.
        activations = 2 * batch * prompt * 8 * self.hidden * elem + 2 * batch * self.vocab * 4
        return weights + kv + activations + margin + weights // 100

    def config(self):
        return S.gpt2_config(self.layers, self.hidden, self.heads, positions=self.positions, vocab=self.vocab)


# GPT-3 paper shapes (head dim 128 where the paper's head counts do not divide d_model), then OPT-30B/66B
# shapes and steps between and beyond them.
FULL = [
    Candidate("gpt3-1.3b", 24, 2048, 16),
    Candidate("gpt3-2.7b", 32, 2560, 32),
    Candidate("gpt3-6.7b", 32, 4096, 32),
    Candidate("gpt3-13b", 40, 5120, 40),
    Candidate("gpt-30b", 48, 7168, 56),
    Candidate("gpt-57b", 56, 9216, 72),
    Candidate("gpt-66b", 64, 9216, 72),
    Candidate("gpt-70b", 68, 9216, 72),
    Candidate("gpt-74b", 72, 9216, 72),
    Candidate("gpt-80b", 78, 9216, 72),
]
TINY = [
    Candidate("tiny-32", 2, 32, 4, 512, 64),
    Candidate("tiny-64", 2, 64, 4, 512, 64),
    Candidate("tiny-128", 2, 128, 4, 512, 64),
    Candidate("tiny-256", 4, 256, 4, 512, 64),
    Candidate("tiny-512", 4, 512, 8, 512, 64),
]
QUICK_FREE_BYTES = 8 * 2**20  # --quick: a pretend 8 MiB device, so the estimate must refuse the larger ones


def free_bytes(device: str) -> int:
    return torch.cuda.mem_get_info()[0] if device == "cuda" else QUICK_FREE_BYTES


def try_candidate(ctx: RunContext, cand: Candidate, engine: str, prompt: int, new: int) -> dict:
    """Build, prepare and generate `new` tokens once; returns timings or raises."""
    model = None
    try:
        model = S.build_empty(GPT2LMHeadModel, cand.config(), ctx.device, ctx.dtype)
        prepared = E.prepare(model, engine, ctx.device)
        ids = torch.randint(1, cand.vocab, (1, prompt), generator=torch.Generator().manual_seed(S.SEED)).to(ctx.device)
        reset_peak(ctx.device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
        if out.shape[1] != prompt + new:
            raise RuntimeError(f"generated {out.shape[1] - prompt} tokens, expected {new}")
        path = f"{prepared.path}; {E.eet_generate_path(model)}" if engine == "eet" else prepared.path
        return {"generate_s": time.perf_counter() - started, "peak_gib": peak_gib(ctx.device), "path": path}
    finally:
        model = None  # drop the last reference before freeing the cache
        free_memory(ctx.device)


def search(ctx: RunContext, engine: str) -> list[dict]:
    prompt, new = (8, 4) if ctx.quick else (128, 128)
    margin = 0 if ctx.quick else 2**30  # cuBLAS workspaces, allocator rounding
    elem = torch.finfo(ctx.dtype).bits // 8
    free_memory(ctx.device)
    free = free_bytes(ctx.device)
    fitting = []
    for cand in sorted(TINY if ctx.quick else FULL, key=Candidate.params, reverse=True):
        need = cand.estimate_bytes(elem, 1, prompt + new, prompt, margin)
        if need > free:
            ctx.notes.append(f"{engine}: {cand.name} ({cand.params() / 1e9:.3g}B) not tried: estimate "
                             f"{need / 2**30:.3g} GiB > {free / 2**30:.3g} GiB free")
        else:
            fitting.append(cand)
    for cand in fitting[:MAX_ATTEMPTS]:
        if ctx.budget.spent():
            return [error_row(CASE, engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent")]
        ctx.log(f"largest-gpt {engine}: trying {cand.name} ({cand.params() / 1e9:.3g}B)")
        free_memory(ctx.device)  # what a failed attempt's traceback held is released only now
        try:
            got = try_candidate(ctx, cand, engine, prompt, new)
        except Exception as exc:  # noqa: BLE001 - OOM or a failure: note it, try the next smaller shape
            ctx.notes.append(f"{engine}: {cand.name} failed: {type(exc).__name__}: {str(exc)[:200]}")
            ctx.log(f"  failed: {type(exc).__name__}")
            continue
        ctx.notes.append(f"{engine}: {cand.name} ({cand.params() / 1e9:.3g}B, {cand.layers} layers x {cand.hidden})"
                         f" generated {new} tokens in {got['generate_s']:.1f} s; path: {got['path']}")
        rows = [row(CASE, engine, "params_billion", cand.params() / 1e9, "B"),
                row(CASE, engine, "generate_s", got["generate_s"], "s")]
        if got["peak_gib"] is not None:
            rows.append(row(CASE, engine, "peak_gib", got["peak_gib"], "GiB"))
        return rows
    return [error_row(CASE, engine, f"no candidate generated {new} tokens (tried {len(fitting[:MAX_ATTEMPTS])})")]


def run(ctx: RunContext) -> list[dict]:
    rows: list[dict] = []
    for engine in (e for e in ("hf-sdpa", "eet") if ctx.wants_engine(e)):
        rows += search(ctx, engine)
    return rows
