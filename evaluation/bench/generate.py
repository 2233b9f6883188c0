"""Suite `generate` (issues #5, #7): greedy generation speed of every engine on the same prompts.

Method (BASELINES.md): prompt 128, 128 new tokens forced (min_new_tokens = max_new_tokens, eos_token_id=None),
CUDA-event medians; prefill = generate(max_new_tokens=1); decode per token = (t(new=128) - t(new=1)) / 127;
generate_ms = the whole generate(new=128); warmup_s = the first generate(new=128) on a freshly built model
(compilation, graph capture, cache setup);
peak_gib = peak allocation of a timed generate call above what was allocated before it, plus the model's weights.
"""

from __future__ import annotations

import torch

from ..results_io import make_row as row
from . import engines as E
from . import roofline as R
from . import shapes as S
from .context import RunContext
from .output import error_row
from .timing import free_memory, median_ms, peak_gib, reset_peak, wall_s

NAME = "generate"
HEADLINE = ["decode_ms_per_token", "prefill_ms", "warmup_s", "peak_gib", "decode_roofline_share"]
LOG_METRICS = ("decode_ms_per_token", "prefill_ms", "warmup_s")
OTHER_ENGINES = ("hf-sdpa", "hf-static-compile", "eet")  # issue #7 rows


def plan(quick: bool) -> tuple[list[tuple[S.ModelShape, list[int], tuple[str, ...]]], int, int]:
    """[(model, batches, engines)], prompt length, new tokens."""
    if quick:
        return [(m, [2], E.GENERATE) for m in S.TINY_GPT2] + [(m, [2], OTHER_ENGINES) for m in
                                                              S.TINY_OTHER_DECODERS], 8, 4
    return [(m, [1, 8, 32], E.GENERATE) for m in S.GPT2_SIZES] + [(m, [1, 8], OTHER_ENGINES) for m in
                                                                    S.OTHER_DECODERS], 128, 128


def model_names(quick: bool) -> list[str]:
    return [m.name for m, _, _ in plan(quick)[0]]


def prompt_ids(vocab: int, batch: int, prompt: int, device: str) -> torch.Tensor:
    """The same random prompt for every engine (ids >= 1: 0 is the pad id)."""
    generator = torch.Generator().manual_seed(S.SEED + batch)
    return torch.randint(1, min(vocab, 50000), (batch, prompt), generator=generator).to(device)


def measure(ctx: RunContext, model, prepared: E.Prepared, ids: torch.Tensor, new: int, engine: str) -> dict:
    """warmup_s, full and prefill medians (ms) and peak GiB for one engine on one prompt batch."""
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None,
                  **prepared.generate_kwargs)

    def run(tokens: int):
        return lambda: model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)

    with torch.inference_mode():
        first: list[torch.Tensor] = []
        warmup = wall_s(lambda: first.append(run(new)()), ctx.device)
        if first[0].shape[1] != ids.shape[1] + new:  # the decode/token formula assumes exactly `new` steps
            raise RuntimeError(f"generate made {first[0].shape[1] - ids.shape[1]} new tokens, expected {new}")
        if engine in E.COMPILED:
            run(new)()  # a compiled path may still specialise on its second call
        reset_peak(ctx.device)
        full = median_ms(run(new), ctx.device, ctx.repeats)
        peak = peak_gib(ctx.device, model)
        prefill = median_ms(run(1), ctx.device, ctx.repeats, warmup=1)
    return {"warmup_s": warmup, "full_ms": full, "prefill_ms": prefill, "peak_gib": peak}


def case_rows(case: str, engine: str, m: dict, numbers: R.ModelNumbers, batch: int, prompt: int, new: int) -> list:
    decode = (m["full_ms"] - m["prefill_ms"]) / (new - 1)
    rows = [
        row(case, engine, "decode_ms_per_token", decode, "ms"),
        row(case, engine, "prefill_ms", m["prefill_ms"], "ms"),
        row(case, engine, "generate_ms", m["full_ms"], "ms"),
        row(case, engine, "warmup_s", m["warmup_s"], "s"),
    ]
    if m["peak_gib"] is not None:
        rows.append(row(case, engine, "peak_gib", m["peak_gib"], "GiB"))
    # Decode reads the weights and, on average, prompt + new/2 cached tokens per step.
    decode_floor = R.decode_floor_ms(numbers, batch, prompt + new / 2)
    prefill_floor = R.flops_floor_ms(R.causal_prefill_flops(numbers, batch, prompt))
    rows.append(row(case, engine, "decode_roofline_share", R.share(decode_floor, decode), "share"))
    rows.append(row(case, engine, "prefill_roofline_share", R.share(prefill_floor, m["prefill_ms"]), "share"))
    return rows


def run(ctx: RunContext) -> list[dict]:
    rows: list[dict] = []
    models, prompt, new = plan(ctx.quick)
    ctx.notes.append(
        f"prompt {prompt}, {new} new tokens forced, greedy, {ctx.dtype} on {ctx.device}, medians of {ctx.repeats};"
        " decode/token = (t(new) - t(new=1)) / (new - 1); roofline shares use the H200 ceilings (4.16 TB/s,"
        " 722 TFLOP/s)."
    )
    ctx.notes.append(
        "every row builds a fresh model; hf-static-compile's warmup_s after a model's first row may reuse "
        "inductor's on-disk cache (same graphs), so the first row of each model is the cold compile"
    )
    for shape, batches, engines in models:
        if not ctx.wants_model(shape.name):
            continue
        for engine in (e for e in engines if ctx.wants_engine(e)):
            for batch in batches:
                case = f"{shape.name}/bs{batch}/prompt{prompt}/new{new}"
                rows += one_case(ctx, shape, engine, batch, prompt, new, case)
    return rows


def one_case(ctx: RunContext, shape: S.ModelShape, engine: str, batch: int, prompt: int, new: int, case: str) -> list:
    if ctx.budget.spent():
        return [error_row(case, engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent")]
    ctx.log(f"generate {case} {engine}")
    model = None
    try:
        model = shape.build(ctx.device, ctx.dtype)
        prepared = E.prepare(model, engine, ctx.device)
        if engine == "eet":
            ctx.notes.append(f"eet on {case}: {prepared.path}")
        numbers = R.numbers(model)
        ids = prompt_ids(model.config.vocab_size, batch, prompt, ctx.device)
        m = measure(ctx, model, prepared, ids, new, engine)
        if engine == "eet":
            ctx.notes.append(f"eet generate on {case}: {E.eet_generate_path(model)}")
        rows = case_rows(case, engine, m, numbers, batch, prompt, new)
        ctx.log(f"  decode {rows[0]['value']:.3f} ms/token, prefill {m['prefill_ms']:.2f} ms, "
                f"warmup {m['warmup_s']:.1f} s")
        return rows
    except Exception as exc:  # noqa: BLE001 - one engine failing (compile error, OOM) must not stop the suite
        ctx.log(f"  error: {type(exc).__name__}: {str(exc)[:200]}")
        return [error_row(case, engine, exc)]
    finally:
        model = None  # drop the last reference before freeing the cache
        E.reset_compiled(engine)
        free_memory(ctx.device)
