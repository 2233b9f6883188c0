"""How each engine prepares a freshly built model: HF attention implementation, eet's accelerate, compile.

    hf-eager / hf-sdpa     HF's own forward with that attention implementation
    hf-static-compile      sdpa + generate(cache_implementation="static"): generate's automatic torch.compile of
                           the decode step (the BASELINES.md method; no manual torch.compile)
    torch-compile(-ro)     torch.compile(model) in default / "reduce-overhead" mode (encoder suite); sentence-embed
                           compiles the HF model's forward inside the SentenceTransformer (prepare_sentence_model)
    eet                    eet_hf.accelerate(model), then the model is called exactly as before
On CPU (--quick) the compile engines use backend="eager": dynamo's tracing is exercised without inductor's
C++ build, which would take minutes on a CI machine (and reduce-overhead is CUDA graphs, GPU only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

GENERATE = ("hf-eager", "hf-sdpa", "hf-static-compile", "eet")
ENCODER = ("hf-eager", "hf-sdpa", "torch-compile", "torch-compile-ro", "eet")
LAYER = ("hf-eager", "hf-sdpa", "eet")
SENTENCE = ("hf-sdpa", "eet", "torch-compile-ro")  # hf-sdpa first: its embeddings are the others' reference
COMPILED = ("hf-static-compile", "torch-compile", "torch-compile-ro")


@dataclass
class Prepared:
    """`runner` is what the suite calls (the model, or its compiled wrapper); `generate_kwargs` go to generate;
    `path` says which code ran (for eet: what explain() reports)."""

    runner: object
    generate_kwargs: dict = field(default_factory=dict)
    path: str = ""


def describe_eet(model: torch.nn.Module) -> str:
    """One line from eet_hf.explain: kernels, how many modules were rewired, and every fallback with its reason."""
    import eet_hf

    report = eet_hf.explain(model)
    fallbacks = "; ".join(f"{k}: {v}" for k, v in report.fallbacks.items()) or "none"
    return f"kernels={report.kernels}, {len(report.accelerated)} modules accelerated, fallbacks: {fallbacks}"


def eet_generate_path(model: torch.nn.Module) -> str:
    """Which decode loop served this model's generate calls so far, from eet's decode-engine counters."""
    try:
        from eet_hf.engine.generate import ENGINE_ATTR
    except ImportError:
        return "this eet_hf has no decode engine: HF's generate loop on eet's forward"
    stats = getattr(getattr(getattr(model, ENGINE_ATTR, None), "engine", None), "stats", None)
    if not stats:
        return "no eet decode loop on this model: HF's generate loop on eet's forward"
    if not stats.get("calls"):
        return "eet decode loop installed but never ran: HF's loop on eet's forward (reason in the eet_hf log)"
    return "eet decode loop ran: " + ", ".join(f"{k} {v}" for k, v in stats.items())


def prepare(model: torch.nn.Module, engine: str, device: str) -> Prepared:
    """Turn a plain HF model into `engine`'s runner (in place for attention settings and eet)."""
    model.set_attn_implementation("eager" if engine == "hf-eager" else "sdpa")
    if engine in ("hf-eager", "hf-sdpa"):
        return Prepared(model, path=f"HF {engine[3:]} attention")
    if engine == "hf-static-compile":
        return Prepared(model, {"cache_implementation": "static"}, "HF static cache + generate's automatic compile")
    if engine in ("torch-compile", "torch-compile-ro"):
        mode = "reduce-overhead" if engine == "torch-compile-ro" else "default"
        if device != "cuda":
            return Prepared(torch.compile(model, backend="eager"), path=f"torch.compile backend=eager ({mode} on GPU)")
        return Prepared(torch.compile(model, mode=mode), path=f"torch.compile mode={mode} over HF sdpa")
    if engine == "eet":
        import eet_hf

        eet_hf.accelerate(model)
        return Prepared(model, path=describe_eet(model))
    raise ValueError(f"unknown engine {engine!r}")


def prepare_sentence_model(st: torch.nn.Module, engine: str, device: str) -> str:
    """Prepare a sentence-transformers SentenceTransformer in place for `engine`; returns the path it runs.

    torch-compile-ro replaces the HF model's `forward`: sentence-transformers' Transformer module calls
    `model.forward(...)` directly, so `model.compile()` (which wraps `__call__`) would never run. dynamic=True: one
    symbolic-shape compile serves every (batch, padded length) of the run, where a static compile per length would
    pay a compile each (dynamo marks a dim dynamic only after recompiling for it); reduce-overhead still records one
    CUDA graph per distinct shape."""
    hf = st[0].auto_model
    hf.set_attn_implementation("sdpa")
    if engine == "hf-sdpa":
        return "plain sentence-transformers on HF sdpa attention"
    if engine == "torch-compile-ro":
        if device != "cuda":
            hf.forward = torch.compile(hf.forward, backend="eager", dynamic=True)
            return "HF forward under torch.compile backend=eager, dynamic=True (reduce-overhead on GPU)"
        hf.forward = torch.compile(hf.forward, mode="reduce-overhead", dynamic=True)
        return "HF forward under torch.compile mode=reduce-overhead, dynamic=True, over HF sdpa"
    if engine == "eet":
        import eet_hf

        eet_hf.accelerate(st)
        return f"eet_hf.accelerate(SentenceTransformer): {describe_eet(st)}"
    raise ValueError(f"unknown sentence-embed engine {engine!r}; known: {SENTENCE}")


def reset_compiled(engine: str) -> None:
    """Forget dynamo's caches between models so recompile limits and guards start fresh."""
    if engine in COMPILED:
        torch._dynamo.reset()
