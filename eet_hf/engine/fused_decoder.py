"""The fused decoder step of the decode engine for Llama-style families and OPT (records in patches/decoder_records.py).

Per layer, five kernels at decode batch sizes (eet_hf/ops/decode.py, csrc/decode_linear.cu):
  1. norm + packed QKV projection (+ bias) + rotary on q and k (or OPT's q scale) + the KV-cache write (Qwen3: the
     projection, then one kernel for its per-head q/k norms + rotary + KV write, csrc/qkv_rope_append.cu)
  2. attention over the cache (eet's decode kernel)
  3. o_proj + the residual add
  4. norm + packed gate/up projection + act(gate) * up (OPT: fc1 + ReLU)
  5. down_proj + the residual add
and the final norm fused into the LM head. The norm is the record's: RMSNorm (Llama order) or LayerNorm (OPT). q/k/v
and gate/up are packed once into one matrix each, HF's parameters becoming views of it (engine/packing.py). Prompts
run the same ops, which take torch's GEMMs beyond 16 rows. The token (and learned position) embedding is the
family's (decoder_families.py).

A model is taken only after its modules matched the record and its norms, MLP and attention prologue (rotary, or the
q scale) reproduced HF's modules on a probe input (`refusal`); the engine's tokens are tested against HF's for every
family (tests/test_fused_decoder.py).
"""

from __future__ import annotations

import copy
import inspect
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from eet_hf import ops
from eet_hf._log import warn_once
from eet_hf.ops import decode as decode_ops
from eet_hf.ops import reference
from eet_hf.patches.decoder_records import RECORDS, DecoderRecord

from . import decoder_families, rotary_swap
from .decode_model import ModelView, StepBounds
from .packing import pack_rows

# Rotary tables per rotary module: (capacity, dtype, device, inv_freq address) -> (cos, sin) [capacity, head_dim].
# Kept across calls (one per cache capacity, a few KB each), since a captured decode graph reads the table it was
# captured with.
_ROPE_TABLES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True)
class Activation:
    epilogue: str  # decode_linear's epilogue
    fn: Callable[[torch.Tensor], torch.Tensor]  # HF's activation (the probe's reference)
    gated: bool  # down(act(gate(x)) * up(x)) rather than down(act(up(x)))


_ACTIVATIONS = {
    "silu": Activation("silu_mul", F.silu, True),
    "gelu_tanh": Activation("gelu_tanh_mul", lambda t: F.gelu(t, approximate="tanh"), True),
    "relu": Activation("relu", F.relu, False),
}
_NORM_NAMES = {"rms": "HF Llama's RMSNorm", "layer": "nn.LayerNorm"}


@dataclass(frozen=True)
class FusedLayer:
    qkv_weight: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden], q_proj/k_proj/v_proj weights are views
    qkv_bias: torch.Tensor | None
    input_norm: torch.Tensor  # [hidden]
    input_norm_bias: torch.Tensor | None  # [hidden] (LayerNorm)
    input_eps: float
    q_norm: torch.Tensor | None  # [head_dim]: per-head RMSNorm of q and k before rotary (Qwen3), else None
    k_norm: torch.Tensor | None
    qk_eps: float
    o_weight: torch.Tensor  # [hidden, heads * head_dim]
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    post_norm_bias: torch.Tensor | None
    post_eps: float
    up_weight: torch.Tensor  # [2 * inner, hidden] packed [gate; up] (gate_proj/up_proj weights are views), or [inner, hidden]
    up_bias: torch.Tensor | None
    down_weight: torch.Tensor  # [hidden, inner]
    down_bias: torch.Tensor | None


@dataclass(frozen=True)
class FusedDecoder(ModelView):
    """A decoder-only LM as the decode engine drives it through fused ops (DecodeModel, decode_model.py)."""

    model: nn.Module
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens, positions) -> [batch, seq, hidden]
    rotary: nn.Module | None  # makes (cos, sin); None: no rotary
    layers: tuple[FusedLayer, ...]
    final_norm: torch.Tensor
    final_norm_bias: torch.Tensor | None
    final_eps: float
    lm_head: nn.Linear
    heads: int
    kv_heads: int
    head_dim: int
    scale: float  # the attention's softmax scale
    q_scale: float  # q's scale after its projection (OPT: the attention's scaling, with scale 1.0), else 1.0
    norm: str  # decode_linear's norm kind: 'rms' or 'layer'
    epilogue: str  # decode_linear's epilogue for the MLP activation
    width: int  # hidden size
    max_positions: int | None  # learned position embeddings bound the position ids; None: no bound

    def forward_last_logits(self, tokens: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor,
                            bounds: StepBounds, padded: bool = True) -> torch.Tensor:
        """tokens, positions: [batch, seq]; kv: [layers, 2, batch, kv_heads, capacity, head_dim]. Logits of each
        sequence's last position, [batch, vocab]; seq > 1 is a prompt written to slots [0, seq)."""
        batch, seq = tokens.shape
        hidden = self.embed(tokens, positions)
        cos = sin = None
        if self.rotary is not None:
            cos_table, sin_table = self._rope_table(kv.shape[-2], hidden)
            cos, sin = F.embedding(positions, cos_table), F.embedding(positions, sin_table)  # [batch, seq, head_dim]
        x = hidden.view(batch * seq, -1)
        for index, layer in enumerate(self.layers):
            k_cache, v_cache = kv[index, 0], kv[index, 1]
            if layer.q_norm is None:
                q = ops.decode_qkv_rope(x.view(batch, seq, -1), layer.qkv_weight, layer.qkv_bias, layer.input_norm,
                                        layer.input_eps, cos, sin, k_cache, v_cache, bounds.write_pos, self.heads,
                                        self.kv_heads, layer.input_norm_bias, self.norm, self.q_scale)
            else:
                qkv = ops.decode_linear(x, layer.qkv_weight, layer.qkv_bias, layer.input_norm, layer.input_eps,
                                        norm_bias=layer.input_norm_bias, norm=self.norm)
                q = ops.qkv_rope_append(qkv.view(batch, seq, -1), layer.q_norm, layer.k_norm, layer.qk_eps, cos, sin,
                                        k_cache, v_cache, bounds.write_pos, self.heads, self.kv_heads, self.q_scale)
            if seq > 1:
                k_cache, v_cache = k_cache[:, :, :seq], v_cache[:, :, :seq]
            attn = ops.attention(q, k_cache, v_cache, bounds.kv_start, bounds.kv_end, bounds.q_offset, seq > 1,
                                 self.scale, padded=padded or seq == 1)
            x = ops.decode_linear(attn.reshape(batch * seq, -1), layer.o_weight, layer.o_bias, residual=x,
                                  epilogue="residual")
            inner = ops.decode_linear(x, layer.up_weight, layer.up_bias, layer.post_norm, layer.post_eps,
                                      epilogue=self.epilogue, norm_bias=layer.post_norm_bias, norm=self.norm)
            x = ops.decode_linear(inner, layer.down_weight, layer.down_bias, residual=x, epilogue="residual")
        # Only the last position feeds the LM head (HF's logits_to_keep=1 in generate); the norm is per position.
        last = x.view(batch, seq, -1)[:, -1]
        return ops.decode_linear(last, self.lm_head.weight, self.lm_head.bias, self.final_norm, self.final_eps,
                                 norm_bias=self.final_norm_bias, norm=self.norm)

    def _rope_table(self, capacity: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF's (cos, sin) for positions [0, capacity), made once by the model's own rotary module: a row per
        position is what the module computes for that position alone (each entry is inv_freq * position, then
        cos / sin), so a decode step gathers two rows instead of re-running the module's ~10 kernels."""
        tables = _ROPE_TABLES.setdefault(self.rotary, {})
        inv_freq = getattr(self.rotary, "inv_freq", None)
        key = (capacity, hidden.dtype, hidden.device, None if inv_freq is None else inv_freq.data_ptr())
        if key not in tables:
            positions = torch.arange(capacity, device=hidden.device).view(1, capacity)
            cos, sin = self.rotary(hidden[:1, :1], positions)
            tables[key] = (cos[0].contiguous(), sin[0].contiguous())
        return tables[key]


def _eps(norm: nn.Module) -> float | None:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return float(eps) if isinstance(eps, (int, float)) else None


def _norm_bias(norm: nn.Module, record: DecoderRecord) -> torch.Tensor | None:
    return getattr(norm, "bias", None) if record.norm == "layer" else None


def _record_norm(norm: nn.Module, record: DecoderRecord, x: torch.Tensor) -> torch.Tensor:
    """The record's norm with `norm`'s parameters, computed as HF's reference module computes it."""
    if record.norm == "layer":
        return decode_ops.norm_reference(x, norm.weight, _norm_bias(norm, record), _eps(norm), "layer")
    return reference.rms_norm(x, norm.weight, _eps(norm))


def _parts(model: nn.Module, record: DecoderRecord) -> dict:
    base = model.get_submodule(record.base)
    layers = list(getattr(base, record.layers))[: model.config.num_hidden_layers]
    rotary = getattr(base, record.rotary) if record.rotary else None
    return dict(base=base, layers=layers, rotary=rotary, final_norm=getattr(base, record.final_norm),
                lm_head=model.get_output_embeddings())


def _layer_modules(layer: nn.Module, record: DecoderRecord) -> dict:
    """The layer's modules by role; "qkv" and "up" are lists of the Linear modules packed in that order ("up": gate
    and up for a gated MLP)."""
    attn = getattr(layer, record.attention)
    mlp = getattr(layer, record.mlp) if record.mlp else layer
    qkv = [getattr(attn, record.qkv)] if record.qkv else [getattr(attn, n) for n in (record.q, record.k, record.v)]
    if record.gate_up:
        up = [getattr(mlp, record.gate_up)]
    else:
        up = [getattr(mlp, n) for n in (record.gate, record.up) if n]
    return {
        "qkv": qkv, "o": getattr(attn, record.o), "up": up, "down": getattr(mlp, record.down),
        "input_norm": getattr(layer, record.input_norm), "post_norm": getattr(layer, record.post_attention_norm),
        "q_norm": getattr(attn, record.q_norm) if record.q_norm else None,
        "k_norm": getattr(attn, record.k_norm) if record.k_norm else None, "attn": attn, "mlp": mlp,
        "act": getattr(layer, record.act) if record.act else None,
    }


def _record_refusal(record: DecoderRecord) -> str | None:
    """What in the record itself has no fused kernel."""
    activation = _ACTIVATIONS.get(record.activation)
    gated = record.gate is not None or record.gate_up is not None
    if record.norm not in _NORM_NAMES or activation is None or activation.gated != gated:
        return f"record arithmetic ({record.norm} norm, {'gated' if gated else 'ungated'} {record.activation}) has " \
               "no fused kernel"
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
        parts = _parts(model, record)
        modules = [_layer_modules(layer, record) for layer in parts["layers"]]
    except AttributeError as missing:
        return f"module layout differs from the {model.config.model_type} record ({missing})"
    present = [name for name in record.absent if getattr(parts["base"], name, None) is not None]
    if present:
        return f"{record.base}.{present[0]} is set: the fused step has no place for it"
    if not isinstance(parts["lm_head"], nn.Linear):
        return "the LM head is not nn.Linear"
    heads, kv_heads, head_dim = _heads(model, modules[0]["attn"])
    for layer in modules:
        if any(type(m) is not nn.Linear for m in (*layer["qkv"], layer["o"], *layer["up"], layer["down"])):
            return "a projection is not torch.nn.Linear"
        rows = sum(m.out_features for m in layer["qkv"])
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
            if _eps(norm) is None or getattr(norm, "weight", None) is None:
                return f"the record's {role} ({getattr(record, role)}) has no weight or epsilon"
    return None


def _probe_refusal(model: nn.Module, record: DecoderRecord) -> str | None:
    """Run the first layer's norms, MLP and attention prologue as HF does and as the record says, on a random probe."""
    parts = _parts(model, record)
    layer = _layer_modules(parts["layers"][0], record)
    weight = layer["o"].weight
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    # The classes' own forwards: the generic adapter may have rewired these instances to eet's ops.
    norms = [layer["input_norm"], layer["post_norm"], parts["final_norm"]]
    norms += [layer[n] for n in ("q_norm", "k_norm") if layer[n] is not None]
    for norm in norms:
        x = probe[..., : norm.weight.shape[0]]
        if not torch.equal(type(norm).forward(norm, x), _record_norm(norm, record, x)):
            return f"{type(norm).__name__} does not compute {_NORM_NAMES[record.norm]}"
    activation = _ACTIVATIONS[record.activation]
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
    head_dim = _head_dim(model, layer["attn"])
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

    layer = _layer_modules(hf_layer, record)
    batch, seq, _ = probe.shape
    heads, kv_heads, head_dim = _heads(model, layer["attn"])
    scaling = float(getattr(layer["attn"], "scaling", head_dim**-0.5))
    h = _record_norm(layer["input_norm"], record, probe)
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
    x = x + _record_mlp(layer, _ACTIVATIONS[record.activation], _record_norm(layer["post_norm"], record, x))
    if not torch.equal(got, x):
        return f"{type(hf_layer).__name__} does not compute the record's layer (norm placement, residuals, MLP)"
    return None


def _head_dim(model: nn.Module, attn: nn.Module) -> int:
    config = model.config
    return getattr(attn, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _heads(model: nn.Module, attn: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim)."""
    heads = model.config.num_attention_heads
    return heads, getattr(model.config, "num_key_value_heads", None) or heads, _head_dim(model, attn)


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


def build(model: nn.Module):
    """The engine's view of `model`: the fused step (q/k/v and gate/up packed as views when not packed yet), or, if
    its kernels disagree with their references on a probe step (`kernel_check`), HF's layers in the engine."""
    view = _build(model)
    reason = kernel_check(view)
    if reason is None:
        return view
    warn_once(f"fused decoder step on {model.config.model_type}: {reason}; HF's decoder layers run in eet's loop")
    return decoder_families.decoder_stack(model)


def kernel_check(view: FusedDecoder) -> str | None:
    """One prompt and one decode step of batch 2 on a small private cache, the decode step run twice: on the kernels
    and on the ops' references (HF's arithmetic through torch). None when logits and written keys/values agree
    within the dtype's rounding; otherwise why not. Only where kernels run (CUDA, fp16/bf16); once per model view."""
    if view.device.type != "cuda" or view.dtype not in (torch.float16, torch.bfloat16):
        return None
    device, batch, prompt = view.device, 2, 8
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, view.vocab, (batch, prompt + 1), generator=generator).to(device)
    positions = torch.arange(prompt + 1, device=device).expand(batch, -1)
    kv = torch.zeros(view.num_layers, 2, batch, view.kv_heads, 16, view.head_dim, dtype=view.dtype, device=device)

    def bounds(write: int, end: int, offset: int) -> StepBounds:
        full = lambda v: torch.full((batch,), v, dtype=torch.int32, device=device)  # noqa: E731
        return StepBounds(write_pos=full(write), kv_start=full(0), kv_end=full(end), q_offset=full(offset))

    with torch.no_grad():
        view.forward_last_logits(tokens[:, :prompt], positions[:, :prompt], kv, bounds(0, prompt, 0), padded=False)
        kv_ref = kv.clone()
        step = bounds(prompt, prompt + 1, prompt)
        fast = view.forward_last_logits(tokens[:, prompt:], positions[:, prompt:], kv, step).float()
        with decode_ops.reference_only():
            ref = view.forward_last_logits(tokens[:, prompt:], positions[:, prompt:], kv_ref, step).float()
    tolerance = 2e-2 if view.dtype == torch.float16 else 6e-2
    for what, got, want in (("logits", fast, ref), ("keys/values", kv[..., prompt, :].float(),
                                                       kv_ref[..., prompt, :].float())):
        if not bool(torch.isfinite(got).all()):
            return f"its kernels wrote non-finite {what} on a probe step"
        error = float((got - want).norm() / want.norm().clamp_min(1e-30))
        if error > tolerance:
            return f"its kernels' {what} differ from the reference by {error:.3g} (relative) on a probe step"
    return None


def pack(model: nn.Module) -> None:
    """Pack every layer's q/k/v and gate/up into one matrix each (HF's parameters become views; idempotent)."""
    record = RECORDS[model.config.model_type]
    for layer in _parts(model, record)["layers"]:
        m = _layer_modules(layer, record)
        pack_rows(m["qkv"])
        pack_rows(m["up"])


def describe(model: nn.Module) -> str:
    """The explain() line of the fused step for this model's record."""
    record = RECORDS[model.config.model_type]
    activation = _ACTIVATIONS[record.activation]
    norm = {"rms": "RMSNorm", "layer": "LayerNorm"}[record.norm]
    prologue = " + rotary" if record.rotary else ""
    prologue += " + q scale" if record.q_scale else ""
    mlp = f"{record.activation}-gated MLP" if activation.gated else f"{record.activation} MLP"
    return f"decoder step (eet fused: {norm} + packed QKV{prologue} + KV write, {mlp})"


def _build(model: nn.Module) -> FusedDecoder:
    record = RECORDS[model.config.model_type]
    parts = _parts(model, record)
    layers = []
    for layer in parts["layers"]:
        m = _layer_modules(layer, record)
        qkv_weight, qkv_bias = pack_rows(m["qkv"])
        up_weight, up_bias = pack_rows(m["up"])
        layers.append(FusedLayer(
            qkv_weight=qkv_weight, qkv_bias=qkv_bias, input_norm=m["input_norm"].weight,
            input_norm_bias=_norm_bias(m["input_norm"], record), input_eps=_eps(m["input_norm"]),
            q_norm=m["q_norm"].weight if m["q_norm"] is not None else None,
            k_norm=m["k_norm"].weight if m["k_norm"] is not None else None,
            qk_eps=_eps(m["q_norm"]) if m["q_norm"] is not None else 0.0, o_weight=m["o"].weight, o_bias=m["o"].bias,
            post_norm=m["post_norm"].weight, post_norm_bias=_norm_bias(m["post_norm"], record),
            post_eps=_eps(m["post_norm"]), up_weight=up_weight, up_bias=up_bias, down_weight=m["down"].weight,
            down_bias=m["down"].bias,
        ))
    attn = _layer_modules(parts["layers"][0], record)["attn"]
    heads, kv_heads, head_dim = _heads(model, attn)
    scaling = float(getattr(attn, "scaling", head_dim**-0.5))
    family = decoder_families.FAMILIES[model.config.model_type](model)
    return FusedDecoder(
        model=model, embed=family["embed"], rotary=parts["rotary"], layers=tuple(layers),
        final_norm=parts["final_norm"].weight, final_norm_bias=_norm_bias(parts["final_norm"], record),
        final_eps=_eps(parts["final_norm"]), lm_head=parts["lm_head"], heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, scale=1.0 if record.q_scale else scaling, q_scale=scaling if record.q_scale else 1.0,
        norm=record.norm, epilogue=_ACTIVATIONS[record.activation].epilogue, width=model.config.hidden_size,
        max_positions=family["max_positions"],
    )
