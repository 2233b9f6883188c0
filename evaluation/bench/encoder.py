"""Suite `encoder` (issue #6): BertModel forward time per engine, with and without padding.

Padding patterns (right padding, as a tokenizer makes it): `nopad`; `halfpad` — the second half of the batch
at half length (mask[bs // 2:, seq // 2:] = 0, as BASELINES.md; at batch 1 the one sequence is halved);
`randpad` — lengths uniform in [1, seq] from a fixed seed. Metric `ms` per forward (CUDA-event median) and
`warmup_s` (the first forward of each shape: compilation and graph capture for the compile engines).
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

NAME = "encoder"
HEADLINE = ["ms", "warmup_s", "roofline_share"]
LOG_METRICS = ("ms", "warmup_s")
PADS = ("nopad", "halfpad", "randpad")
CALLS_PER_REPEAT = 5  # a forward is milliseconds: more samples than a generate for a stable median


def plan(quick: bool) -> tuple[list[S.ModelShape], list[tuple[int, int]]]:
    if quick:
        return S.TINY_BERT, [(2, 16)]
    return S.BERT_SIZES, [(1, 128), (8, 128), (32, 128), (32, 512)]


def model_names(quick: bool) -> list[str]:
    return [m.name for m in plan(quick)[0]]


def lengths_for(pad: str, batch: int, seq: int) -> list[int]:
    """Unpadded length of each sequence."""
    if pad == "nopad":
        return [seq] * batch
    if pad == "halfpad":
        return [seq] * (batch // 2) + [seq // 2] * (batch - batch // 2)
    if pad == "randpad":
        generator = torch.Generator().manual_seed(S.SEED + batch * 100003 + seq)
        return torch.randint(1, seq + 1, (batch,), generator=generator).tolist()
    raise ValueError(f"unknown padding pattern {pad!r}; known: {PADS}")


def encoder_inputs(vocab: int, lengths: list[int], seq: int, device: str) -> dict[str, torch.Tensor]:
    """Right-padded ids (pad id 0) and the matching 0/1 attention mask."""
    generator = torch.Generator().manual_seed(S.SEED + seq)
    ids = torch.randint(1, vocab, (len(lengths), seq), generator=generator)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": (ids * mask).to(device), "attention_mask": mask.to(device)}


def run(ctx: RunContext) -> list[dict]:
    rows: list[dict] = []
    models, sizes = plan(ctx.quick)
    ctx.notes.append(f"BertModel {ctx.dtype} on {ctx.device}; ms = median of {ctx.repeats * CALLS_PER_REPEAT} "
                     "forwards; roofline_share = FLOPs on the real (unpadded) tokens at 722 TFLOP/s / ms.")
    for shape in (m for m in models if ctx.wants_model(m.name)):
        for engine in (e for e in E.ENCODER if ctx.wants_engine(e)):
            cases = [(f"{shape.name}/bs{b}/seq{s}/{pad}", b, s, pad) for b, s in sizes for pad in PADS]
            rows += engine_cases(ctx, shape, engine, cases)
    return rows


def engine_cases(ctx: RunContext, shape: S.ModelShape, engine: str, cases: list[tuple]) -> list[dict]:
    """Every (batch, seq, pad) case for one engine on one freshly built model."""
    if ctx.budget.spent():
        return [error_row(c[0], engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent") for c in cases]
    rows: list[dict] = []
    model = None
    try:
        model = shape.build(ctx.device, ctx.dtype)
        prepared = E.prepare(model, engine, ctx.device)
        ctx.notes.append(f"{engine} on {shape.name}: {prepared.path}")
        numbers = R.numbers(model)
        for case, batch, seq, pad in cases:
            rows += one_case(ctx, prepared, numbers, model.config.vocab_size, engine, case, batch, seq, pad)
    except Exception as exc:  # noqa: BLE001 - building/preparing failed: every case of this engine is an error
        done = {r["case"] for r in rows}
        rows += [error_row(c[0], engine, exc) for c in cases if c[0] not in done]
    finally:
        model = None  # drop the last reference before freeing the cache
        E.reset_compiled(engine)
        free_memory(ctx.device)
    return rows


def one_case(ctx: RunContext, prepared: E.Prepared, numbers: R.ModelNumbers, vocab: int, engine: str, case: str,
             batch: int, seq: int, pad: str) -> list[dict]:
    if ctx.budget.spent():
        return [error_row(case, engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent")]
    ctx.log(f"encoder {case} {engine}")
    lengths = lengths_for(pad, batch, seq)
    inputs = encoder_inputs(vocab, lengths, seq, ctx.device)
    try:
        with torch.inference_mode():
            warmup = wall_s(lambda: prepared.runner(**inputs), ctx.device)
            ms = median_ms(lambda: prepared.runner(**inputs), ctx.device, ctx.repeats * CALLS_PER_REPEAT, warmup=2)
    except Exception as exc:  # noqa: BLE001 - e.g. a torch.compile failure: record it, go on
        ctx.log(f"  error: {type(exc).__name__}: {str(exc)[:200]}")
        free_memory(ctx.device)
        return [error_row(case, engine, exc)]
    floor = R.flops_floor_ms(R.encoder_flops(numbers, lengths))
    ctx.log(f"  {ms:.3f} ms (first call {warmup:.1f} s)")
    return [
        row(case, engine, "ms", ms, "ms"),
        row(case, engine, "warmup_s", warmup, "s"),
        row(case, engine, "roofline_share", R.share(floor, ms), "share"),
    ]
