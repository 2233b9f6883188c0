"""Suite `decoder-layer`: one GPT-2 decoder layer (a GPT2Model with n_layer=1, so eet's adapter applies) over a
whole sequence — prefill of the prompt, then single-token steps with a KV cache up to the total length.

Grid (the EET paper's decoder-layer figures): hidden 768 ... 12288 at batch 4, prompt 512, total 1024; and a
prompt-length sweep 128 ... 4096 (total = 2 x prompt) at hidden 1024. The paper's other baselines,
FasterTransformer and Fairseq, are not available in this environment; HF eager and sdpa stand in
(--hf-sdpa-without-cudnn runs HF sdpa without torch's cuDNN backend, whose first pass over thousands of new key
lengths takes minutes: context.py).
HF's engines run the sequence as HF runs it: a prefill forward, then plain single-token forwards with the cache
passed positionally (transformers 5.24 renamed the keyword). eet runs it as eet runs it: the same layer under an LM
head (GPT2LMHeadModel, n_layer=1, vocabulary 1024: the embedding gather and a [hidden x 1024] head add under 1%
of a layer's bytes from hidden 768 on) through `generate` with total - prompt forced new tokens, i.e. eet's
decode engine — KV arena, prefill, then one CUDA-graph replay per step — which is what the paper's EET timing
covered (its own decoding loop), where a plain forward per step would time HF's Python around eet's kernels.
"""

from __future__ import annotations

import torch

from ..results_io import make_row as row
from . import engines as E
from . import roofline as R
from . import shapes as S
from .context import RunContext
from .output import error_row
from .timing import free_memory, median_ms, wall_s

NAME = "decoder-layer"
HEADLINE = ["ms", "first_sequence_s", "roofline_share"]
LOG_METRICS = ("ms",)


def plan(quick: bool) -> list[tuple[int, int, int, int]]:
    """(hidden, batch, prompt, total) cases, without duplicates."""
    if quick:
        cases = [(h, 2, 8, 16) for h in (32, 48)] + [(32, 2, p, 2 * p) for p in (4, 8)]
    else:
        cases = [(h, 4, 512, 1024) for h in (768, 1024, 1600, 2048, 4096, 8192, 12288)]
        cases += [(1024, 4, p, 2 * p) for p in (128, 256, 512, 1024, 2048, 4096)]
    return list(dict.fromkeys(cases))


def group(hidden: int, prompt: int, quick: bool) -> str:
    """The --models name of a case: hidden{H} for the hidden-size grid, hidden{H}-prompt{P} for the sweep's
    other prompts (so a GPU call can take a subset: HF sdpa's first sequence at a new length is slow, below)."""
    main_prompt = 8 if quick else 512
    return f"hidden{hidden}" if prompt == main_prompt else f"hidden{hidden}-prompt{prompt}"


def model_names(quick: bool) -> list[str]:
    return list(dict.fromkeys(group(h, p, quick) for h, _, p, _ in plan(quick)))


def sequence(model, ids: torch.Tensor, steps: int) -> int:
    """Prefill `ids`, then `steps` single-token forwards that reuse and grow the cache; returns the cache length."""
    out = model(ids, use_cache=True)
    cache, token = out[1], ids[:, -1:]
    for _ in range(steps):
        model(token, cache, use_cache=True)
    return cache.get_seq_length()


def engine_sequence(model, ids: torch.Tensor, steps: int) -> int:
    """eet: the prompt, then `steps` decode steps of eet's loop (greedy, forced length); returns the cache length
    the last step attended (prompt + steps, as HF's loop after the same steps)."""
    out = model.generate(ids, max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False, eos_token_id=None,
                         pad_token_id=0, attention_mask=torch.ones_like(ids))
    return out.shape[1] - 1


def floor_ms(numbers: R.ModelNumbers, batch: int, prompt: int, total: int) -> float:
    """Prefill FLOPs at the matmul ceiling plus each step's weight + KV bytes at the copy ceiling."""
    prefill = R.flops_floor_ms(R.causal_prefill_flops(numbers, batch, prompt))
    steps = sum(R.decode_floor_ms(numbers, batch, context) for context in range(prompt, total))
    return prefill + steps


def run(ctx: RunContext) -> list[dict]:
    rows: list[dict] = []
    ctx.notes.append(
        "The paper's FasterTransformer and Fairseq baselines are not available here: eet is compared with HF "
        f"eager and sdpa. {ctx.dtype} on {ctx.device}; ms = whole sequence (prefill + steps), median of "
        f"{ctx.repeats}; roofline_share = (prefill FLOPs / 722 TFLOP/s + per-step weight and KV bytes / 4.16 TB/s)"
        " / ms."
    )
    for hidden, batch, prompt, total in plan(ctx.quick):
        if not ctx.wants_model(group(hidden, prompt, ctx.quick)):
            continue
        for engine in (e for e in E.LAYER if ctx.wants_engine(e)):
            rows += one_case(ctx, engine, hidden, batch, prompt, total)
    return rows


def one_case(ctx: RunContext, engine: str, hidden: int, batch: int, prompt: int, total: int) -> list[dict]:
    case = f"hidden{hidden}/bs{batch}/prompt{prompt}/total{total}"
    if ctx.budget.spent():
        return [error_row(case, engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent")]
    ctx.log(f"decoder-layer {case} {engine}")
    model = None
    try:
        with_head = engine == "eet"
        model = S.decoder_layer_model(hidden, total, ctx.device, ctx.dtype, with_head)
        prepared = E.prepare(model, engine, ctx.device)
        run = engine_sequence if with_head else sequence
        if engine == "eet":
            ctx.notes.append(f"eet on {case}: {prepared.path}")
        generator = torch.Generator().manual_seed(S.SEED + hidden)
        ids = torch.randint(1, model.config.vocab_size, (batch, prompt), generator=generator).to(ctx.device)
        with torch.inference_mode(), ctx.engine_backends(engine):
            cached = run(model, ids, 2)  # kernels loaded, cache paths taken, allocator primed
            if cached != prompt + 2:  # else the steps would not be attending a growing cache
                raise RuntimeError(f"the cache holds {cached} tokens after prompt {prompt} + 2 steps")
            # One whole untimed sequence first, for every engine: eet captures its decode graph for this cache
            # size, and HF sdpa's cuDNN backend builds an execution plan per new key length (measured on the H200:
            # 19 s for the first 512-step sequence at hidden 768, 0.4 s afterwards). Timed: the steady state.
            first = wall_s(lambda: run(model, ids, total - prompt), ctx.device)
            ms = median_ms(lambda: run(model, ids, total - prompt), ctx.device, ctx.repeats)
        share = R.share(floor_ms(R.numbers(model), batch, prompt, total), ms)
        ctx.log(f"  {ms:.1f} ms")
        return [row(case, engine, "ms", ms, "ms"), row(case, engine, "first_sequence_s", first, "s"),
                row(case, engine, "roofline_share", share, "share")]
    except Exception as exc:  # noqa: BLE001 - one engine failing (OOM, unsupported shape) must not stop the suite
        ctx.log(f"  error: {type(exc).__name__}: {str(exc)[:200]}")
        return [error_row(case, engine, exc)]
    finally:
        model = None  # drop the last reference before freeing the cache
        free_memory(ctx.device)
