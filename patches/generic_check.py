"""First-call verification for the generic adapter: a module recognised by its structure runs eet's op only after
its first call showed that the op reproduces the module's own output.

The rewired forward, on the module's first eligible call, runs HF's forward (the answer returned that time) and
the eet forward, and compares them within the dtype's rounding noise. Equal: later calls run eet's op. Different:
the module keeps HF's forward for good, and the report moves it from `accelerated` to `fallbacks`, with the
measured difference (logged once). The state lives on the module (`_eet_check`), so a deep copy of the model
carries it, and restore() removes it with the forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eet_hf._log import warn_once
from eet_hf.errors import EetUnsupportedError
from eet_hf.report import Report

# max |eet - HF| / max |HF| accepted on the first call: a few units in the last place of the dtype (the ops
# compute in fp32 and round once, HF sometimes rounds between steps), far below a structural difference.
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

PENDING, EET, HF = "pending", "eet", "hf"


@dataclass
class Check:
    """What one module's first-call check decides. `what` names the eet op, for the report."""

    path: str
    what: str
    module_type: str
    report: Report
    strict: bool
    state: str = PENDING


def _is_compiling() -> bool:
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def compare(got: Any, expected: Any) -> str | None:
    """Why `got` does not reproduce `expected` (tensors), or None when it does within the dtype's tolerance."""
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor):
        return f"HF's forward returned {type(expected).__name__}, not a tensor"
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return f"eet gives {tuple(got.shape)} {got.dtype}, HF {tuple(expected.shape)} {expected.dtype}"
    tolerance = RELATIVE_TOLERANCE.get(expected.dtype)
    if tolerance is None:
        return f"dtype {expected.dtype} has no eet kernel"
    finite = torch.isfinite(expected)
    if not torch.equal(torch.isfinite(got), finite):
        return "eet's output is non-finite where HF's is finite (or the reverse)"
    diff = (got.double() - expected.double()).abs()[finite]
    scale = expected.double().abs()[finite].max() if bool(finite.any()) else torch.tensor(0.0)
    worst = diff.max().item() if diff.numel() else 0.0
    if worst > tolerance * max(scale.item(), 1e-30):
        return f"eet's {expected.dtype} output differs from HF's by {worst:.3g} (scale {scale.item():.3g})"
    return None


def checked(fused: Callable, eligible: Callable[..., bool]) -> Callable:
    """A forward that runs `fused` once the first-call check passed, HF's own forward otherwise.

    eligible(module, *args, **kwargs) says whether `fused` can take this call at all (argument shapes, dtypes);
    calls it cannot take run HF's forward and decide nothing. Training mode always runs HF's forward.
    """

    @functools.wraps(fused)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        check: Check = self._eet_check
        if self.training or check.state == HF or not eligible(self, *args, **kwargs):
            if self.training:
                warn_once("training mode: HF's own forwards run (eet's fused forwards are inference-only)")
            return type(self).forward(self, *args, **kwargs)
        if check.state == EET:
            return fused(self, *args, **kwargs)
        expected = type(self).forward(self, *args, **kwargs)
        if _is_compiling():  # comparing needs a read-back: decide on an eager call
            return expected
        with torch.no_grad():
            reason = compare(fused(self, *args, **kwargs), expected)
        _decide(check, reason)
        return expected

    return forward


def _decide(check: Check, reason: str | None) -> None:
    if reason is None:
        check.state = EET
        return
    check.state = HF
    full = f"first-call check: eet {check.what} does not reproduce this module ({reason}); HF's forward kept"
    if check.path in check.report.accelerated:
        check.report.accelerated.remove(check.path)
    check.report.fallbacks[check.path] = full
    # Once per kind of module, not per layer: explain() lists every module with its own numbers.
    warn_once(f"eet {check.what} does not reproduce {check.module_type}: those modules keep HF's forward "
              "(eet_hf.explain(model) lists them)")
    if check.strict:
        raise EetUnsupportedError(f"eet_hf: {check.path}: {full} (accelerate(strict=True) refuses fallbacks)")
