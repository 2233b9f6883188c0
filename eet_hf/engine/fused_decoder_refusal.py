"""Whether eet's fused decoder step may serve a model (fused_decoder.py): its modules must match its family's record,
and its norms, MLP and attention prologue (rotary, or OPT's q scale) must reproduce HF's own modules on a probe input.
Anything else keeps HF's layers in the engine, with the reason in explain()."""

from __future__ import annotations

import copy
import inspect
import sys

import torch
from torch import nn

from eet_hf.ops import reference
from eet_hf.patches.decoder_records import RECORDS, DecoderRecord

from . import decoder_families, rotary_swap
from .decoder_parts import (
    ACTIVATIONS,
    NORM_NAMES,
    Activation,
    head_dim_of,
    heads_of,
    layer_modules,
    model_parts,
    norm_eps,
    out_features,
    record_norm,
)


def _record_refusal(record: DecoderRecord) -> str | None:
    """What in the record itself has no fused kernel."""
    activation = ACTIVATIONS.get(record.activation)
    gated = record.gate is not None or record.gate_up is not None
    if record.norm not in NORM_NAMES or activation is None or activation.gated != gated:
        return f"record arithmetic ({record.norm} norm, {'gated' if gated else 'ungated'} {record.activation}) has " \
               "no fused kernel"
    if record.projection not in ("linear", "conv1d"):
        return f"record projection kind {record.projection!r} is neither 'linear' nor 'conv1d'"
    if record.rotary is not None and record.rotary_form != "rotate_half":
        return f"record rotary form {record.rotary_form!r} has no fused kernel"
    if record.mlp is None and record.rotary is not None:
        return "an MLP inline in the layer is verified by the layer probe, which runs rotary-free layers only"
    return None


def _structure_refusal(model: nn.Module, record: DecoderRecord) -> str | None:
    reason = _record_refusal(record)
    if reason is not None:
        return reason
    for name, value in record.config:
        if getattr(model.config, name, value) != value:
            return f"config.{name} is {getattr(model.config, name)!r}; the {model.config.model_type} record takes " \
                   f"{value!r}"
    try:
        parts = model_parts(model, record)
        modules = [layer_modules(layer, record) for layer in parts["layers"]]
    except AttributeError as missing:
        return f"module layout differs from the {model.config.model_type} record ({missing})"
    present = [name for name in record.absent if getattr(parts["base"], name, None) is not None]
    if present:
        return f"{record.base}.{present[0]} is set: the fused step has no place for it"
    if not isinstance(parts["lm_head"], nn.Linear):
        return "the LM head is not nn.Linear"
    heads, kv_heads, head_dim = heads_of(model, modules[0]["attn"])
    projection = _projection_class(record)
    for layer in modules:
        if any(type(m) is not projection for m in (*layer["qkv"], layer["o"], *layer["up"], layer["down"])):
            return f"a projection is not {projection.__module__}.{projection.__name__}"
        rows = sum(out_features(m) for m in layer["qkv"])
        if rows != (heads + 2 * kv_heads) * head_dim:
            return f"the q/k/v projections have {rows} rows, not (heads + 2 * kv_heads) * head_dim = " \
                   f"({heads} + 2 * {kv_heads}) * {head_dim}"
        norms = {"input_norm": layer["input_norm"], "post_attention_norm": layer["post_norm"],
                 "final_norm": parts["final_norm"], "q_norm": layer["q_norm"], "k_norm": layer["k_norm"]}
        for role, norm in norms.items():
            if getattr(record, role) is None:
                continue
            if norm is None:
                return f"the record's {role} ({getattr(record, role)}) is None in this model"
            if norm_eps(norm) is None or getattr(norm, "weight", None) is None:
                return f"the record's {role} ({getattr(record, role)}) has no weight or epsilon"
    return None


def _projection_class(record: DecoderRecord) -> type[nn.Module]:
    if record.projection == "conv1d":
        from transformers.pytorch_utils import Conv1D

        return Conv1D
    return nn.Linear


def _probe_refusal(model: nn.Module, record: DecoderRecord) -> str | None:
    """Run the first layer's norms, MLP and attention prologue as HF does and as the record says, on a random probe."""
    parts = model_parts(model, record)
    layer = layer_modules(parts["layers"][0], record)
    weight = layer["o"].weight
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    # The classes' own forwards: the generic adapter may have rewired these instances to eet's ops.
    norms = [layer["input_norm"], layer["post_norm"], parts["final_norm"]]
    norms += [layer[n] for n in ("q_norm", "k_norm") if layer[n] is not None]
    for norm in norms:
        x = probe[..., : norm.weight.shape[0]]
        if not torch.equal(type(norm).forward(norm, x), record_norm(norm, record, x)):
            return f"{type(norm).__name__} does not compute {NORM_NAMES[record.norm]}"
    activation = ACTIVATIONS[record.activation]
    act = layer["act"]
    if act is not None and not torch.equal(type(act).forward(act, probe), activation.fn(probe)):
        return f"{type(layer['act']).__name__} is not {record.activation}"
    if record.mlp is not None:
        mlp = layer["mlp"]
        if not torch.equal(type(mlp).forward(mlp, probe), _record_mlp(layer, activation, probe)):
            form = "act(gate(x)) * up(x)" if activation.gated else "act(up(x))"
            return f"{type(mlp).__name__} is not down({form.replace('act', record.activation)})"
    if record.rotary is None:
        reason = _layer_probe_refusal(model, record, parts["layers"][0], probe)
    else:
        reason = _rotary_probe_refusal(model, parts, layer, probe, generator)
    if reason is not None:
        return reason
    if not inspect.isfunction(getattr(sys.modules[type(layer["attn"]).__module__], "eager_attention_forward", None)):
        return "attention module without HF's attention interface"
    return None


def _record_mlp(layer: dict, activation: Activation, x: torch.Tensor) -> torch.Tensor:
    """The record's MLP through HF's own Linear modules: down(act(gate(x)) * up(x)) or down(act(up(x)))."""
    y = torch.cat([linear(x) for linear in layer["up"]], dim=-1)
    if not activation.gated:
        return layer["down"](activation.fn(y))
    gate, up = y.chunk(2, dim=-1)
    return layer["down"](activation.fn(gate) * up)


def _rotary_probe_refusal(model: nn.Module, parts: dict, layer: dict, probe: torch.Tensor,
                          generator: torch.Generator) -> str | None:
    """HF's apply_rotary_pos_emb is the rotate_half form over the whole head (eet's rotary op, bit for bit)."""
    weight = layer["o"].weight
    modules = rotary_swap.modules_using_rotary([layer["attn"]])
    if not modules:
        return "attention does not use HF's apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)"
    apply = getattr(modules[0], rotary_swap.NAME)
    heads = model.config.num_attention_heads
    head_dim = head_dim_of(model, layer["attn"])
    positions = torch.arange(3, device=weight.device).view(1, 3)
    cos, sin = parts["rotary"](probe[:1], positions)
    if cos.shape[-1] != head_dim:
        return f"partial rotary ({cos.shape[-1]} of {head_dim} dims)"
    q = torch.randn(1, heads, 3, head_dim, generator=generator).to(weight.device, weight.dtype)
    if not all(torch.equal(a, b) for a, b in zip(apply(q, q, cos, sin), reference.rotary(q, q, cos, sin))):
        return f"{modules[0].__name__}.apply_rotary_pos_emb is not the rotate_half form"
    return None


# The layer probe's attention function (registered in HF's AttentionInterface on first use, under a name no model
# is loaded with): records what HF's attention module hands over and returns the query as the attention output
# ([batch, seq, heads, head_dim]), so the rest of the layer's output depends on it.
_PROBE_ATTENTION = "eet_fused_decoder_probe"


def _probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    module.__dict__["_eet_probe_seen"] = (query, key, value, scaling)
    return query.transpose(1, 2), None


def _class_forwards(module: nn.Module) -> nn.Module:
    """A copy of `module` (parameters shared) whose submodules, itself included, run their classes' forwards in eval
    mode: the generic adapter may have rewired instances to eet's ops, and the probe compares against HF's code."""
    clone = copy.copy(module)
    clone.__dict__.pop("forward", None)
    clone.training = False
    clone._modules = {name: None if child is None else _class_forwards(child) for name, child in module._modules.items()}
    return clone


def _layer_probe_refusal(model: nn.Module, record: DecoderRecord, hf_layer: nn.Module,
                         probe: torch.Tensor) -> str | None:
    """HF's decoder layer (its classes' forwards, on copies sharing the parameters, with the probe attention) against
    the record's arithmetic through the same Linear modules: the attention prologue (q scale, no rotary: q, k, v
    equal bit for bit), then norm placement, residuals and MLP (the layer's outputs equal bit for bit)."""
    from transformers import AttentionInterface

    AttentionInterface.register(_PROBE_ATTENTION, _probe_attention)  # idempotent
    clone = _class_forwards(hf_layer)
    attn = getattr(clone, record.attention)
    attn.config = copy.deepcopy(attn.config)
    attn.config._attn_implementation = _PROBE_ATTENTION
    try:
        got = type(clone).forward(clone, probe, attention_mask=None)
    except Exception as error:  # a layer whose forward wants more than HF's usual arguments: not one the record knows
        return f"{type(hf_layer).__name__} did not run on the probe ({type(error).__name__}: {error})"
    got = got[0] if isinstance(got, tuple) else got
    seen = attn.__dict__.get("_eet_probe_seen")
    if seen is None:
        return f"{type(attn).__name__} does not call HF's attention interface"

    layer = layer_modules(hf_layer, record)
    batch, seq, _ = probe.shape
    heads, kv_heads, head_dim = heads_of(model, layer["attn"])
    scaling = float(getattr(layer["attn"], "scaling", head_dim**-0.5))
    h = record_norm(layer["input_norm"], record, probe)
    q, k, v = torch.cat([linear(h) for linear in layer["qkv"]], dim=-1).split(
        [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    if record.q_scale:
        q = q * scaling
    expected = [t.view(batch, seq, -1, head_dim).transpose(1, 2) for t in (q, k, v)]
    if not all(torch.equal(a, b) for a, b in zip(seen[:3], expected)):
        return f"{type(attn).__name__}'s q, k, v differ from the record's (q {'' if record.q_scale else 'not '}" \
               "scaled after its projection, no rotary)"
    if seen[3] != (1.0 if record.q_scale else scaling):
        return f"{type(attn).__name__} attends with scale {seen[3]}, not the record's"
    x = probe + layer["o"](q)
    x = x + _record_mlp(layer, ACTIVATIONS[record.activation], record_norm(layer["post_norm"], record, x))
    if not torch.equal(got, x):
        return f"{type(hf_layer).__name__} does not compute the record's layer (norm placement, residuals, MLP)"
    return None


def refusal(model: nn.Module) -> str | None:
    """Why the fused step cannot serve this model (HF's layers run in the engine instead), or None."""
    record = RECORDS.get(model.config.model_type)
    if record is None:
        return f"no fused-decoder record for model_type {model.config.model_type!r} (patches/decoder_records.py)"
    reason = decoder_families.config_refusal(model) or _structure_refusal(model, record)
    if reason is not None:
        return reason
    if any(p.device.type == "meta" for p in model.parameters()):
        return "weights on the meta device (offloaded)"
    with torch.no_grad():
        return _probe_refusal(model, record)
