"""The config an accelerated model's modules read: the model's own config, seen through a view that names eet's
attention.

Why not a changed copy of the config: HF builds new models straight from `model.config` (`type(model)(model.config)`,
`AutoModel.from_config`, assistant models, HF's own tests) and shares that object with them, so a config that says
"eet" makes models that were never accelerated run eet's attention. So `model.config` stays the object the user
had, unchanged, and the modules under it hold a view instead:
- the view shares the config's attribute dict, so every attribute, and every change made later through either
  object (`model.config.output_hidden_states = True`), is one and the same;
- it reports eet's attention while the config still names the implementation the model was accelerated with, and
  whatever another implementation set later (`set_attn_implementation("eager")`) otherwise;
- its copies and pickles are plain configs of the model's own class, naming the config's implementation.
The view is an instance of a subclass of the config's class made once per class (same name, one property more), so
isinstance checks and HF's class-name lookups (AutoModel's mappings) treat it as the config itself.
"""

from __future__ import annotations

import copyreg
from typing import Any

from transformers import PreTrainedConfig

_VIEW_CLASSES: dict[type, type] = {}


def _names(self) -> tuple[str, str]:
    """(eet's attention, the config's implementation at accelerate()) of a view; for an instance HF builds of the
    view's class itself (to_diff_dict's `self.__class__()`), which is no view, the plain field twice."""
    try:
        return self._eet_names
    except AttributeError:
        current = self.__dict__.get("_attn_implementation_internal")
        return current, current


def _attn_implementation(self) -> Any:
    attention, original = _names(self)
    current = self.__dict__.get("_attn_implementation_internal")
    return attention if current == original else current


def _set_attn_implementation(self, value: Any) -> None:
    # eet's own name, set again, means "unchanged" (the config keeps the original).
    attention, original = _names(self)
    PreTrainedConfig._attn_implementation.fset(self, original if value == attention else value)


def _internal(self) -> Any:
    return self.__dict__.get("_attn_implementation_internal")


def _set_internal(self, value: Any) -> None:
    # HF writes the field directly (PreTrainedModel.__init__ of a model built from this view, set_attn_implementation
    # on a submodel): eet's name written back must not reach the shared dict, where the config would report it.
    attention, original = _names(self)
    self.__dict__["_attn_implementation_internal"] = original if value == attention else value


def _reduce_ex(self, protocol: int) -> tuple:
    """Copies and pickles: a plain config of the model's own class, over a copy of the shared attributes."""
    plain = type(self).__mro__[1]
    return copyreg._reconstructor, (plain, object, None), dict(self.__dict__)


def _view_class(config_class: type) -> type:
    found = _VIEW_CLASSES.get(config_class)
    if found is None:
        namespace = {
            "__slots__": ("_eet_names",),  # kept apart from the shared attribute dict
            "__module__": config_class.__module__,
            "__qualname__": config_class.__qualname__,
            "__doc__": config_class.__doc__,
            "_attn_implementation": property(_attn_implementation, _set_attn_implementation),
            "_attn_implementation_internal": property(_internal, _set_internal),
            "__reduce_ex__": _reduce_ex,
            # PreTrainedConfig's equality (same class not required), not the dataclass one made for the subclass.
            "__eq__": PreTrainedConfig.__eq__,
        }
        found = _VIEW_CLASSES[config_class] = type(config_class.__name__, (config_class,), namespace)
    return found


def attention_view(config: PreTrainedConfig, attention: str) -> PreTrainedConfig:
    """A view of `config` that reports `attention` as its attention implementation while `config` reports the one
    it reports now; everything else is `config`'s own (one shared attribute dict)."""
    view_class = _view_class(type(config))
    view = view_class.__new__(view_class)
    object.__setattr__(view, "__dict__", config.__dict__)
    object.__setattr__(view, "_eet_names", (attention, config._attn_implementation))
    return view
