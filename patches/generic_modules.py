"""What the generic adapter recognises by structure, and the eet forwards it then checks on the first call.

- Norms: a leaf module with a 1-D `weight` (plus a `bias` of the same size for LayerNorm), an eps attribute and a
  forward taking one tensor. torch LayerNorm (and look-alikes with weight + bias) -> eet layer_norm; weight only
  -> eet rms_norm (HF Llama order; other orders, e.g. Gemma's (1 + weight), fail the first-call check).
- GELU MLPs: a module whose children are Linear(+bias) -> GELU activation [-> Linear] (dropouts aside), with a
  forward taking one tensor -> eet linear_gelu (GEMM, bias and GELU fused) [then the second Linear, HF's].
Shapes: x [..., hidden]; norms return [..., hidden]; MLPs [..., out_features of the last Linear].
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import activations as hf_act

from eet_hf import ops

from .generic_check import RELATIVE_TOLERANCE

EPS_NAMES = ("variance_epsilon", "eps", "epsilon")
# HF / torch activation classes -> eet bias_gelu's `approximate`. FastGELU is the tanh form written differently:
# the first-call check measures whether it matches in the dtype at hand.
_GELU_KINDS = {
    getattr(hf_act, name): kind
    for name, kind in (("GELUActivation", "none"), ("NewGELUActivation", "tanh_staged"), ("GELUTanh", "tanh"),
                       ("PytorchGELUTanh", "tanh"), ("FastGELUActivation", "tanh"))
    if hasattr(hf_act, name)
}
_SILU_TYPES = tuple(t for t in (nn.SiLU, getattr(hf_act, "SiLUActivation", None)) if t is not None)
# Every activation class HF's ACT2FN builds, plus torch's: modules the report names when eet leaves them to HF.
ACTIVATION_TYPES = tuple({c[0] if isinstance(c, tuple) else c for c in hf_act.ACT2CLS.values()}
                         | {nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh})


def gelu_kind(module: nn.Module) -> str | None:
    """eet's `approximate` for a GELU activation module ("none" = erf, "tanh"), None when it is no GELU eet has."""
    if type(module) is nn.GELU:
        return module.approximate
    return _GELU_KINDS.get(type(module))


def is_silu(module: nn.Module) -> bool:
    return isinstance(module, _SILU_TYPES)


def takes_one_tensor(module: nn.Module) -> bool:
    """The class forward's first argument is positional and any others have defaults: a call with one
    positional tensor means the same to HF's forward and to eet's."""
    params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params[1:])


# ---------------------------------------------------------------------------------------------------------------
# Norms


@dataclass(frozen=True)
class NormMatch:
    op: str  # "layer_norm" | "rms_norm"
    eps: float


_OTHER_DIM_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                    nn.InstanceNorm3d, nn.GroupNorm)


def _eps_of(module: nn.Module) -> float | None:
    for name in EPS_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, (float, int)) and not isinstance(value, bool):
            return float(value)
    return None


def match_norm(module: nn.Module) -> NormMatch | str | None:
    """NormMatch for a norm eet can stand in for; a reason string for a norm-looking module it cannot; None for
    anything else (not a norm)."""
    if isinstance(module, _OTHER_DIM_NORMS):
        return f"{type(module).__name__} normalises over other dims than the last: no eet kernel"
    if isinstance(module, nn.LayerNorm):
        if module.weight is None or len(module.normalized_shape) != 1:
            return "LayerNorm without an affine weight or over several dims: no eet kernel"
        return NormMatch("layer_norm", float(module.eps)) if takes_one_tensor(module) else "unknown forward"
    named = dict(module.named_parameters(recurse=False))
    looks_like_norm = "norm" in type(module).__name__.lower()
    if any(True for _ in module.children()) or not named:
        return "norm with submodules or without parameters: not recognised" if looks_like_norm else None
    weight, bias = named.get("weight"), named.get("bias")
    shapes_ok = weight is not None and weight.dim() == 1 and (bias is None or bias.shape == weight.shape)
    eps = _eps_of(module)
    if not shapes_ok or set(named) - {"weight", "bias"} or eps is None or not takes_one_tensor(module):
        if looks_like_norm:
            return f"norm-like module with parameters {sorted(named)} and eps {eps}: structure not recognised"
        return None
    return NormMatch("layer_norm" if bias is not None else "rms_norm", eps)


def norm_eligible(self: nn.Module, *args, **kwargs) -> bool:
    """One tensor in the weight's dtype and device, with the weight's size as its last dim."""
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        return False
    x, w = args[0], self.weight
    return x.dtype == w.dtype and x.device == w.device and x.dim() >= 1 and x.shape[-1] == w.numel() and \
        x.dtype in RELATIVE_TOLERANCE


def layer_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return ops.layer_norm(hidden_states, self.weight, getattr(self, "bias", None), self._eet_eps)


def rms_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return ops.rms_norm(hidden_states, self.weight, self._eet_eps)


NORM_FORWARDS = {"layer_norm": layer_norm_forward, "rms_norm": rms_norm_forward}


# ---------------------------------------------------------------------------------------------------------------
# GELU MLPs


@dataclass(frozen=True)
class MlpMatch:
    first: str  # child name of the Linear before the GELU
    second: str | None  # child name of the Linear after it, or None
    approximate: str


def match_gelu_mlp(module: nn.Module) -> MlpMatch | None:
    """Children Linear(+bias) -> GELU [-> Linear] (dropouts aside) and no parameters of its own."""
    children = [(name, c) for name, c in module.named_children() if not isinstance(c, nn.Dropout)]
    linears = [(name, c) for name, c in children if type(c) is nn.Linear]
    acts = [c for _, c in children if type(c) is not nn.Linear]
    if len(acts) != 1 or len(linears) not in (1, 2) or gelu_kind(acts[0]) is None:
        return None
    if any(True for _ in module.parameters(recurse=False)) or not takes_one_tensor(module):
        return None
    if len(linears) == 1:
        (first, lin), second = linears[0], None
    else:
        (name_a, a), (name_b, b) = linears
        # Registration order does not say which comes first (DistilBERT: lin1, lin2, activation); shapes do.
        if a.out_features == b.in_features:
            first, lin, second = name_a, a, name_b
        elif b.out_features == a.in_features:
            first, lin, second = name_b, b, name_a
        else:
            return None
    if lin.bias is None:
        return None
    return MlpMatch(first, second, gelu_kind(acts[0]))


def mlp_eligible(self: nn.Module, *args, **kwargs) -> bool:
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        return False
    x, lin = args[0], getattr(self, self._eet_mlp.first)
    return x.dtype == lin.weight.dtype and x.device == lin.weight.device and x.dim() >= 1 and \
        x.shape[-1] == lin.in_features and x.dtype in RELATIVE_TOLERANCE


def gelu_mlp_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """gelu(x @ W1^T + b1) fused, then the second Linear (dropouts are identities in eval mode)."""
    match: MlpMatch = self._eet_mlp
    lin = getattr(self, match.first)
    hidden_states = ops.linear_gelu(hidden_states, lin.weight.t(), lin.bias, match.approximate)
    return getattr(self, match.second)(hidden_states) if match.second else hidden_states
