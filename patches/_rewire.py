"""The mechanics every adapter shares: rewire a module instance, record a fallback, undo it all.

Instances, never HF classes, are rewired (types.MethodType on the module's own `forward`), so other models
in the process stay untouched and restore() only deletes what was set.
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from eet_hf import ops
from eet_hf._log import warn_once
from eet_hf.attention import LOADED_ATTN_ATTR
from eet_hf.errors import EetUnsupportedError
from eet_hf.report import Report

from ._config_view import attention_view


class _Undo(enum.Enum):
    """Markers in the undo log, compared by identity: enum members stay themselves through copy and pickle (plain
    object() markers did not, and a deep-copied model's undo failed half way)."""

    MISSING = "missing"  # the attribute was not there before
    REWIRED = "rewired"  # an entry of rewire(): (module, REWIRED, (our bound forward, the forward it replaced))


_MISSING = _Undo.MISSING
_REWIRED = _Undo.REWIRED

# HF activation names (config.activation_function / hidden_act) -> eet bias_gelu's `approximate`.
# gelu_new (NewGELUActivation) is HF's formula evaluated in the storage dtype, reproduced with its roundings.
GELU_APPROXIMATE = {"gelu": "none", "gelu_new": "tanh_staged", "gelu_pytorch_tanh": "tanh"}


def inference_only(fused: Callable) -> Callable:
    """A fused forward that runs HF's own forward in training mode (dropout, autograd), logged once."""

    @functools.wraps(fused)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            warn_once("training mode: HF's own forwards run (eet's fused forwards are inference-only)")
            return type(self).forward(self, *args, **kwargs)
        return fused(self, *args, **kwargs)

    return forward


@inference_only
def layer_norm_forward(self: nn.LayerNorm, hidden_states: torch.Tensor) -> torch.Tensor:
    return ops.layer_norm(hidden_states, self.weight, self.bias, self.eps)


def layer_norm_unfusable(module: nn.Module) -> str | None:
    """Why eet's layer_norm cannot stand in for this module, or None when it can."""
    if type(module) is not nn.LayerNorm:
        return f"{type(module).__name__} is not torch.nn.LayerNorm"
    if module.weight is None or len(module.normalized_shape) != 1:
        return "LayerNorm without affine weight or over several dims"
    return None


def _offloading_hooks(module: nn.Module) -> list:
    """accelerate AlignDevicesHooks that keep this module's own weights off-device (on meta) between calls."""
    hook = module.__dict__.get("_hf_hook")
    if hook is None:
        return []
    return [h for h in getattr(hook, "hooks", (hook,)) if getattr(h, "offload", False) and hasattr(h, "weights_map")]


def with_offloaded_children(fused: Callable, module: nn.Module) -> Callable:
    """`fused` for `module`, loading the weights of offloaded descendants around the call.

    A fused forward reads its children's weights directly (GPT-2's block reads ln_1.weight without calling ln_1),
    but accelerate's offload hooks (cpu_offload, device_map with "cpu"/"disk" offload) load a module's weights only
    when that module itself is called and leave them on the meta device otherwise. So each offloaded descendant's
    hook loads its weights before the fused forward and offloads them again after it, as its own call would.
    Without such hooks this is one attribute lookup per descendant.
    """
    descendants = [m for m in module.modules() if m is not module]

    @functools.wraps(fused)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        loaded = [(m, h) for m in descendants for h in _offloading_hooks(m)]
        if not loaded:
            return fused(self, *args, **kwargs)
        for child, hook in loaded:
            hook.pre_forward(child)
        try:
            return fused(self, *args, **kwargs)
        finally:
            for child, hook in loaded:
                hook.post_forward(child, None)

    return forward


def _keeping_signature(forward: Callable, replaced: Callable) -> Callable:
    """`forward` (a function taking the module first) as a new function object that reports the signature of
    `replaced`, the bound forward it stands in for: code that inspects `module.forward` (HF's tests, pipelines'
    argument filtering) then sees the module's own parameters, not eet's `(*args, **kwargs)`. A copy of the
    function, not a wrapper around it: no extra call per forward."""
    try:
        signature = inspect.signature(replaced)
        signature = signature.replace(parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                                                  *signature.parameters.values()])
    except (TypeError, ValueError):  # a callable inspect cannot read: eet's own signature stays
        return forward
    clone = types.FunctionType(forward.__code__, forward.__globals__, forward.__name__, forward.__defaults__,
                               forward.__closure__)
    clone.__kwdefaults__ = forward.__kwdefaults__
    functools.update_wrapper(clone, forward)
    clone.__signature__ = signature
    return clone


def _holding_config(previous: Callable, config: Any, view: Any) -> Callable:
    """The model's own forward, run with `view` as its `config` attribute (a base model builds its attention masks
    from its own config), and `config` there again after. Another call already running (another thread) or a config
    replaced by the user since accelerate() are left as they are."""

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get("config") is not config:
            return previous(*args, **kwargs)
        self.__dict__["config"] = view
        try:
            return previous(*args, **kwargs)
        finally:
            self.__dict__["config"] = config

    forward.__wrapped__ = getattr(previous, "__func__", previous)  # inspect.unwrap finds what it wraps
    return forward


def _unwire(module: nn.Module, ours: Callable, replaced: Callable | None) -> None:
    """Put back the forward `ours` replaced, wherever `ours` sits now: accelerate hooks added after accelerate()
    moved it to `_old_forward` (their wrapper stays), hooks removed since moved it back to `forward`."""
    for slot in ("_old_forward", "forward"):
        if module.__dict__.get(slot) is ours:
            if replaced is not None:
                module.__dict__[slot] = replaced
            elif slot == "forward":
                del module.__dict__["forward"]  # the class's own shows through again
            else:
                module.__dict__[slot] = types.MethodType(type(module).forward, module)
            return


class PatchContext:
    """Collects what an adapter rewires and what it leaves to HF, and can undo every change."""

    def __init__(self, model: nn.Module, options: dict[str, Any], kernels: str) -> None:
        self.model = model
        self.options = options
        self.report = Report(model_type=getattr(model.config, "model_type", type(model).__name__), kernels=kernels)
        self._paths = {module: path or "<model>" for path, module in model.named_modules()}
        self._undo: list[tuple[Any, str | _Undo, Any]] = []
        self._view: Any = None  # use_attention()'s config view, which finish() gives the model's own forward

    def path(self, module: nn.Module) -> str:
        return self._paths[module]

    def rewire(self, module: nn.Module, fused_forward: Callable, *, label: str | None = None,
               reads_children: bool = True) -> None:
        """label: what explain() lists (default: the module's path). reads_children=False: fused_forward only
        calls child modules (whose own hooks then load offloaded weights), so the per-call offload scan is
        skipped."""
        forward = with_offloaded_children(fused_forward, module) if reads_children else fused_forward
        self._install_forward(module, forward)
        self.report.accelerated.append(label or self.path(module))

    def _install_forward(self, module: nn.Module, forward: Callable) -> None:
        # accelerate's dispatch hooks keep the real forward in `_old_forward` and wrap it: rewire that one.
        name = "_old_forward" if "_old_forward" in module.__dict__ else "forward"
        ours = types.MethodType(_keeping_signature(forward, getattr(module, name)), module)
        self._undo.append((module, _REWIRED, (ours, module.__dict__.get(name))))
        setattr(module, name, ours)

    def fallback(self, where: nn.Module | str, reason: str) -> None:
        path = where if isinstance(where, str) else self.path(where)
        if self.options.get("strict"):
            raise EetUnsupportedError(f"eet_hf: {path}: {reason} (accelerate(strict=True) refuses fallbacks)")
        self.report.fallbacks[path] = reason

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """setattr that undo() reverts; works for properties too (config._attn_implementation is one)."""
        self._undo.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    def bind(self, module: nn.Module, name: str, value: Any) -> None:
        """Set an instance attribute that shadows a class attribute (e.g. `generate`); undo() deletes it, so the
        class's own shows through again."""
        self._undo.append((module, name, module.__dict__.get(name, _MISSING)))
        module.__dict__[name] = value

    def use_attention(self, name: str) -> None:
        """Select attention `name` for this model alone, leaving what `model.config` says to everyone else (other
        models built from the same config object, models built from it later, save_pretrained) unchanged: every
        module under the model gets a view of the config that names `name` (_config_view.py); the model's own
        module holds the view only while its forward runs (finish())."""
        config = self.model.config
        view = attention_view(config, name)
        for module in self.model.modules():
            if getattr(module, "config", None) is config:
                if module is not self.model:
                    self.set_attr(module, "config", view)
                # What eet's attention falls back to: the implementation the model was loaded with (attention.py).
                self.bind(module, LOADED_ATTN_ATTR, config._attn_implementation)
        self._view = view

    def finish(self) -> None:
        """After the adapter (whose rewiring of the model's own forward this wraps): the model's forward, and its
        generate, run with use_attention()'s view as its config. generate() builds the masks of compileable (static)
        caches from the model's config before the forward: with the view they are eet's bounds, as in the forward."""
        if self._view is None:
            return
        name = "_old_forward" if "_old_forward" in self.model.__dict__ else "forward"
        self._install_forward(self.model, _holding_config(getattr(self.model, name), self.model.config, self._view))
        generate = getattr(self.model, "generate", None)
        if isinstance(generate, types.MethodType) and generate.__self__ is self.model:
            holding = _holding_config(generate, self.model.config, self._view)
            self.bind(self.model, "generate", types.MethodType(holding, self.model))

    def plain_twin(self) -> nn.Module:
        """The model as plain HF sees it: a new module object for each of the model's modules, whose attributes are
        the original's (tensors, configs, hooks: shared, nothing copied) minus what eet set, as undo() would leave
        them. deepcopy and pickle copy this instead of the model (eet_hf/copies.py)."""
        modules = list(self.model.modules())
        twins = {id(m): type(m).__new__(type(m)) for m in modules}
        for module in modules:
            twin = twins[id(module)]
            twin.__dict__.update(module.__dict__)
            twin.__dict__["_modules"] = {k: None if c is None else twins[id(c)] for k, c in module._modules.items()}

        rebound: dict[int, types.MethodType] = {}  # a method of a module -> the same method of its twin, made once

        def rebind(value: Any) -> Any:
            if isinstance(value, types.MethodType) and id(value.__self__) in twins:
                if id(value) not in rebound:
                    rebound[id(value)] = types.MethodType(value.__func__, twins[id(value.__self__)])
                return rebound[id(value)]
            return twins.get(id(value), value) if isinstance(value, nn.Module) else value

        for obj, name, old in reversed(self._undo):
            twin = twins.get(id(obj))
            if twin is None:  # not one of the model's modules
                continue
            if name is _REWIRED:
                ours, replaced = old  # `ours` may sit on the twin rebound already: an eet forward another replaced
                _unwire(twin, rebound.get(id(ours), ours), None if replaced is None else rebind(replaced))
            elif old is _MISSING:
                twin.__dict__.pop(name, None)
            else:
                twin.__dict__[name] = rebind(old)
        return twins[id(self.model)]

    def layer_norm(self, module: nn.Module) -> None:
        reason = layer_norm_unfusable(module)
        if reason is None:
            self.rewire(module, layer_norm_forward)
        else:
            self.fallback(module, reason)

    def undo(self) -> None:
        for obj, name, old in reversed(self._undo):
            if name is _REWIRED:
                _unwire(obj, *old)
            elif old is not _MISSING:
                setattr(obj, name, old)
            elif isinstance(obj, nn.Module):
                obj.__dict__.pop(name, None)  # a rewired forward: the class's own shows through again
            else:
                delattr(obj, name)
        self._undo.clear()
        self._view = None
