"""Suite `decode-profile`: one eet decode step judged as a whole, per model and batch.

For each case the model (fp16, random weights) generates once through eet, which captures its decode step as a CUDA
graph; the suite then times replays of that graph (CUDA events, median µs per step), profiles ten replays (torch
profiler, CUDA activity) and reports: kernels per step, µs per step of each kernel class, the GB/s each projection
class streams its weights at, and the step's share of the copy ceiling measured in the same run (a device-to-device
copy of 512 MiB, bytes read + written) on the bytes a step must read (every weight once, the LM head too when
tied, and the KV cache up to the step's position). With programmatic dependent launch kernels overlap, so per-class
µs add up to more than the step: compare classes with each other, and the step with its floor. The critical path
does add up: `crit_us:<class>` gives each kernel the time from the previous kernel's end to its own end (a kernel
waits for its predecessor to finish, so ends are in order), which sums to the step; `crit_us:idle` is the part of it
with no kernel running at all (launch gaps).
--quick: a tiny Llama on the CPU, eager steps, operator counts only (CI).
"""

from __future__ import annotations

import collections
import re

import torch

from ..results_io import make_row as row
from . import shapes as S
from .context import RunContext
from .output import error_row

NAME = "decode-profile"
HEADLINE = ["step_us", "kernels_per_step", "copy_share", "gbps:qkv+rope+kv", "gbps:gate_up+act", "gbps:o|down+residual",
            "crit_us:attention", "crit_us:idle"]
LOG_METRICS = ("step_us", "kernels_per_step", "copy_share")
PROMPT = 128
# decode_linear_kernel<T, kNT, kNorm, kEpi, ...> (csrc/decode_linear_kernel.cuh; kNorm was a bool before OPT's
# LayerNorm; the work split's parameters follow kEpi): the
# epilogue id (DecodeEpilogue) names the projection. Class names are Llama's; OPT's fc1 + ReLU (5) and GPT-2's c_fc +
# gelu_new (6) count as the MLP's input projection + activation, their QKV (4, no rotary) as qkv+rope+kv.
_EPILOGUE_CLASS = {"0": "lm_head", "1": "o|down+residual", "2": "gate_up+act", "3": "gate_up+act", "4": "qkv+rope+kv",
                   "5": "gate_up+act", "6": "gate_up+act"}
_CLASSES = [  # (class, pattern on the kernel name), first match wins
    ("attention", re.compile(r"attn|attention|decode_kernel|flash", re.I)),
    ("qkv_rope_append", re.compile(r"qkv_rope_append")),
    ("rms_norm", re.compile(r"rms_norm|layer_norm")),
    ("small_linear", re.compile(r"small_linear")),
    ("cublas_gemm", re.compile(r"gemm|gemv|nvjet|cutlass|splitK", re.I)),
    ("argmax/sampling", re.compile(r"argmax|ArgMax|reduce_kernel|topk|sort", re.I)),
    ("embedding/gather", re.compile(r"embedding|index|gather", re.I)),
]


def model_names(quick: bool) -> list[str]:
    return [m.name for m, _ in _plan(quick)]


def _plan(quick: bool) -> list[tuple[S.ModelShape, list[int]]]:
    if quick:
        return [(S.TINY_OTHER_DECODERS[0], [1])]
    return [(m, [1, 8]) for m in S.OTHER_DECODERS] + [(m, [1, 8]) for m in S.GPT2_SIZES if m.name in ("gpt2", "gpt2-xl")]


def classify(name: str) -> str:
    match = re.search(r"decode_linear_kernel<[^,]+, \d+, (?:true|false|\d+), (\d+)[,>]", name)
    if match:
        return _EPILOGUE_CLASS[match.group(1)]
    return next((label for label, pattern in _CLASSES if pattern.search(name)), "other")


def class_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Weight bytes each projection class streams per step (Llama-style, OPT and GPT-2 names; other families: none)."""
    out: dict[str, int] = collections.Counter()
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()
        if re.search(r"\.(q_proj|k_proj|v_proj|qkv_proj|c_attn)\.weight$", name):
            out["qkv+rope+kv"] += size
        elif re.search(r"\.(gate_proj|up_proj|gate_up_proj|fc1|c_fc)\.weight$", name):
            out["gate_up+act"] += size
        elif re.search(r"\.(o_proj|down_proj|out_proj|fc2|c_proj)\.weight$", name):
            out["o|down+residual"] += size
    head = model.get_output_embeddings()
    if head is not None:
        out["lm_head"] += head.weight.numel() * head.weight.element_size()
    return dict(out)


def step_bytes(model: torch.nn.Module, batch: int, context: int) -> int:
    """Bytes one decode step must read: every weight once (a tied embedding table once, as the LM head; an untied
    input embedding not at all, since a step reads one row of it) and the KV cache up to `context`. (Until
    2026-12-07 a tied table was counted twice, which overstated copy_share by ~20% on llama-1b.)"""
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embed is not None and (head is None or embed.weight.data_ptr() != head.weight.data_ptr()):
        params.pop(embed.weight.data_ptr(), None)
    total = sum(params.values())
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    element = next(model.parameters()).element_size()
    return total + 2 * config.num_hidden_layers * batch * context * kv_heads * head_dim * element


def copy_gbps(device: str) -> float:
    """Device-to-device copy bandwidth (bytes read + written), median of 20 copies of 512 MiB."""
    x = torch.empty(2**29, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    times = []
    for _ in range(23):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = sorted(times[3:])[len(times[3:]) // 2]
    return 2 * x.numel() / (ms * 1e-3) / 1e9


def _graph(model):
    """The decode graph eet's generate captured, and the state tensors it reads."""
    from eet_hf.engine.generate import ENGINE_ATTR

    graphs = model.__dict__[ENGINE_ATTR].engine._graphs
    if not graphs:
        raise RuntimeError("eet captured no decode graph (its loop did not run: see the eet_hf log)")
    graph, state, _ = next(reversed(graphs.values()))
    return graph, state


def replay_us(graph: torch.cuda.CUDAGraph, rewind, repeats: int = 50) -> float:
    for _ in range(5):
        graph.replay()
    rewind()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / repeats


def _profile(step, steps: int, activity) -> list[tuple[str, float, float, float]]:
    """(name, µs, start, end) of every kernel (CUDA) or aten op (CPU) the steps ran, in start order."""
    from torch.profiler import profile

    with profile(activities=[activity]) as prof:
        for _ in range(steps):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    device_type = torch.autograd.DeviceType.CUDA if activity.name == "CUDA" else torch.autograd.DeviceType.CPU
    events = [(e.name, float(e.device_time), float(e.time_range.start), float(e.time_range.end))
              for e in prof.events() if e.device_type == device_type and (device_type.name == "CUDA" or
                                                                          e.name.startswith("aten::"))]
    return sorted(events, key=lambda e: e[2])


def critical_path(kernels: list[tuple[str, float, float, float]]) -> dict[str, float]:
    """Per class, the sum over its kernels of (own end - the previous kernel's end): what each kernel adds to the
    step's length once its predecessor is done. "idle": the part of those spans where no kernel was running. The
    first kernel has no predecessor and is left out."""
    out: dict[str, float] = collections.Counter()
    ordered = sorted(kernels, key=lambda e: e[3])
    for (_, _, _, prev_end), (name, _, start, end) in zip(ordered, ordered[1:]):
        out[classify(name)] += end - prev_end
        out["idle"] += max(0.0, start - prev_end)
    return dict(out)


def one_case(ctx: RunContext, shape: S.ModelShape, batch: int, ceiling: float | None) -> list[dict]:
    import eet_hf

    case = f"{shape.name}/bs{batch}/prompt{PROMPT}"
    if ctx.budget.spent():
        return [error_row(case, "eet", f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent")]
    ctx.log(f"decode-profile {case}")
    model = shape.build(ctx.device, ctx.dtype)
    eet_hf.accelerate(model)
    ids = torch.randint(1, min(model.config.vocab_size, 50000), (batch, PROMPT), device=ctx.device)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():  # a cache with room for the 60 replays measured below
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)
    rows = []
    if ctx.device == "cuda":
        from torch.profiler import ProfilerActivity

        graph, state = _graph(model)
        # Replays advance the step's counters (slot, position): each measurement starts from the generate's last
        # step again, so positions stay inside the cache and its rotary table. The state was made under
        # inference_mode (by generate), so it is rewound there too.
        with torch.inference_mode():
            counters = state.counters.clone()
            step_us = replay_us(graph, lambda: state.counters.copy_(counters))
            state.counters.copy_(counters)
            kernels = _profile(graph.replay, 10, ProfilerActivity.CUDA)
        steps = 10
        bytes_needed = step_bytes(model, batch, PROMPT + 4)
        rows += [row(case, "eet", "step_us", step_us, "us"), row(case, "eet", "step_gb", bytes_needed / 1e9, "GB")]
        if ceiling:
            rows.append(row(case, "eet", "copy_share", bytes_needed / (step_us * 1e-6) / 1e9 / ceiling, "share"))
    else:
        from torch.profiler import ProfilerActivity

        def step():
            with torch.inference_mode():
                model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)

        kernels, steps = _profile(step, 1, ProfilerActivity.CPU), 1
    per_class: dict[str, list[float]] = collections.defaultdict(list)
    for name, micros, _, _ in kernels:
        per_class[classify(name)].append(micros)
    if ctx.device == "cuda":
        for label, micros in sorted(critical_path(kernels).items()):
            rows.append(row(case, "eet", f"crit_us:{label}", micros / steps, "us"))
    rows.append(row(case, "eet", "kernels_per_step", len(kernels) / steps, "kernels"))
    weights = class_bytes(model)
    for label, times in sorted(per_class.items()):
        us = sum(times) / steps
        rows.append(row(case, "eet", f"us:{label}", us, "us"))
        rows.append(row(case, "eet", f"count:{label}", len(times) / steps, "kernels"))
        if label in weights and us > 0 and ctx.device == "cuda":
            rows.append(row(case, "eet", f"gbps:{label}", weights[label] / (us * 1e-6) / 1e9, "GB/s"))
    return rows


def run(ctx: RunContext) -> list[dict]:
    ceiling = copy_gbps(ctx.device) if ctx.device == "cuda" else None
    rows = [row("device", "reference", "copy_gbps", ceiling, "GB/s")] if ceiling else []
    ctx.notes.append(f"prompt {PROMPT}, greedy, {ctx.dtype} on {ctx.device}; the decode step captured by eet's "
                     "generate, replayed 50 times (median of one event pair over them) and profiled over 10 replays")
    for shape, batches in _plan(ctx.quick):
        if not ctx.wants_model(shape.name):
            continue
        for batch in batches:
            try:
                rows += one_case(ctx, shape, batch, ceiling)
            except Exception as exc:  # noqa: BLE001 - one case failing must not stop the suite
                ctx.log(f"  error: {type(exc).__name__}: {str(exc)[:200]}")
                rows.append(error_row(f"{shape.name}/bs{batch}/prompt{PROMPT}", "eet", exc))
            finally:
                if ctx.device == "cuda":
                    torch.cuda.empty_cache()
    return rows
