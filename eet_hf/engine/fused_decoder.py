"""The fused decoder step of the decode engine for Llama-style families (records in patches/decoder_records.py).

Per layer, five kernels at decode batch sizes (eet_hf/ops/decode.py, csrc/decode_linear.cu):
  1. RMSNorm + packed QKV projection (+ bias) + rotary on q and k + the KV-cache write (Qwen3: the projection, then
     one kernel for its per-head q/k norms + rotary + KV write, csrc/qkv_rope_append.cu)
  2. attention over the cache (eet's decode kernel)
  3. o_proj + the residual add
  4. RMSNorm + packed gate/up projection + act(gate) * up
  5. down_proj + the residual add
and the final norm fused into the LM head. q/k/v and gate/up are packed once into one matrix each, HF's parameters
becoming views of it (engine/packing.py). Prompts run the same ops, which take torch's GEMMs beyond 16 rows.

A model is taken only after its modules matched the record and its norm, MLP and rotary reproduced HF's modules on
a probe input (`refusal`); the engine's tokens are tested against HF's for every family (tests/test_fused_decoder.py).
"""

from __future__ import annotations

import inspect
import sys
import weakref
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

_ACTIVATIONS = {"silu": ("silu_mul", F.silu), "gelu_tanh": ("gelu_tanh_mul", lambda t: F.gelu(t, approximate="tanh"))}


@dataclass(frozen=True)
class FusedLayer:
    qkv_weight: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden], q_proj/k_proj/v_proj weights are views
    qkv_bias: torch.Tensor | None
    input_norm: torch.Tensor  # [hidden]
    input_eps: float
    q_norm: torch.Tensor | None  # [head_dim]: per-head RMSNorm of q and k before rotary (Qwen3), else None
    k_norm: torch.Tensor | None
    qk_eps: float
    o_weight: torch.Tensor  # [hidden, heads * head_dim]
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    post_eps: float
    gate_up_weight: torch.Tensor  # [2 * inner, hidden], gate_proj/up_proj weights are views
    gate_up_bias: torch.Tensor | None
    down_weight: torch.Tensor  # [hidden, inner]
    down_bias: torch.Tensor | None


@dataclass(frozen=True)
class FusedDecoder(ModelView):
    """A Llama-style LM as the decode engine drives it through fused ops (DecodeModel, decode_model.py)."""

    model: nn.Module
    embed: nn.Embedding
    rotary: nn.Module
    layers: tuple[FusedLayer, ...]
    final_norm: torch.Tensor
    final_eps: float
    lm_head: nn.Linear
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    epilogue: str  # decode_linear's gated epilogue for the MLP activation

    max_positions = None

    @property
    def width(self) -> int:
        return self.embed.weight.shape[1]

    def forward_last_logits(self, tokens: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor,
                            bounds: StepBounds, padded: bool = True) -> torch.Tensor:
        """tokens, positions: [batch, seq]; kv: [layers, 2, batch, kv_heads, capacity, head_dim]. Logits of each
        sequence's last position, [batch, vocab]; seq > 1 is a prompt written to slots [0, seq)."""
        batch, seq = tokens.shape
        hidden = self.embed(tokens)
        cos_table, sin_table = self._rope_table(kv.shape[-2], hidden)
        cos, sin = F.embedding(positions, cos_table), F.embedding(positions, sin_table)  # [batch, seq, head_dim]
        x = hidden.view(batch * seq, -1)
        for index, layer in enumerate(self.layers):
            k_cache, v_cache = kv[index, 0], kv[index, 1]
            if layer.q_norm is None:
                q = ops.decode_qkv_rope(x.view(batch, seq, -1), layer.qkv_weight, layer.qkv_bias, layer.input_norm,
                                        layer.input_eps, cos, sin, k_cache, v_cache, bounds.write_pos, self.heads,
                                        self.kv_heads)
            else:
                qkv = ops.decode_linear(x, layer.qkv_weight, layer.qkv_bias, layer.input_norm, layer.input_eps)
                q = ops.qkv_rope_append(qkv.view(batch, seq, -1), layer.q_norm, layer.k_norm, layer.qk_eps, cos, sin,
                                     k_cache, v_cache, bounds.write_pos, self.heads, self.kv_heads)
            if seq > 1:
                k_cache, v_cache = k_cache[:, :, :seq], v_cache[:, :, :seq]
            attn = ops.attention(q, k_cache, v_cache, bounds.kv_start, bounds.kv_end, bounds.q_offset, seq > 1,
                                 self.scale, padded=padded or seq == 1)
            x = ops.decode_linear(attn.reshape(batch * seq, -1), layer.o_weight, layer.o_bias, residual=x,
                                  epilogue="residual")
            inner = ops.decode_linear(x, layer.gate_up_weight, layer.gate_up_bias, layer.post_norm, layer.post_eps,
                                      epilogue=self.epilogue)
            x = ops.decode_linear(inner, layer.down_weight, layer.down_bias, residual=x, epilogue="residual")
        # Only the last position feeds the LM head (HF's logits_to_keep=1 in generate); the norm is per position.
        last = x.view(batch, seq, -1)[:, -1]
        return ops.decode_linear(last, self.lm_head.weight, self.lm_head.bias, self.final_norm, self.final_eps)


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


def _parts(model: nn.Module, record: DecoderRecord) -> dict:
    base = getattr(model, record.base)
    layers = list(getattr(base, record.layers))[: model.config.num_hidden_layers]
    return dict(base=base, layers=layers, embed=getattr(base, record.embed), rotary=getattr(base, record.rotary),
                final_norm=getattr(base, record.final_norm), lm_head=model.get_output_embeddings())


def _layer_modules(layer: nn.Module, record: DecoderRecord) -> dict:
    """The layer's modules by role; "qkv" and "gate_up" are lists of the Linear modules packed in that order."""
    attn, mlp = getattr(layer, record.attention), getattr(layer, record.mlp)
    qkv = [getattr(attn, record.qkv)] if record.qkv else [getattr(attn, n) for n in (record.q, record.k, record.v)]
    gate_up = [getattr(mlp, record.gate_up)] if record.gate_up else [getattr(mlp, record.gate), getattr(mlp, record.up)]
    return {
        "qkv": qkv, "o": getattr(attn, record.o), "gate_up": gate_up, "down": getattr(mlp, record.down),
        "input_norm": getattr(layer, record.input_norm), "post_norm": getattr(layer, record.post_attention_norm),
        "q_norm": getattr(attn, record.q_norm) if record.q_norm else None,
        "k_norm": getattr(attn, record.k_norm) if record.k_norm else None, "attn": attn, "mlp": mlp,
    }


def _structure_refusal(model: nn.Module, record: DecoderRecord) -> str | None:
    try:
        parts = _parts(model, record)
        modules = [_layer_modules(layer, record) for layer in parts["layers"]]
    except AttributeError as missing:
        return f"module layout differs from the {model.config.model_type} record ({missing})"
    if not isinstance(parts["embed"], nn.Embedding) or not isinstance(parts["lm_head"], nn.Linear):
        return "embedding or LM head is not nn.Embedding / nn.Linear"
    if record.norm != "rms" or record.rotary_form != "rotate_half" or record.activation not in _ACTIVATIONS:
        return f"record arithmetic ({record.norm}, {record.rotary_form}, {record.activation}) has no fused kernel"
    for layer in modules:
        if any(type(m) is not nn.Linear for m in (*layer["qkv"], layer["o"], *layer["gate_up"], layer["down"])):
            return "a projection is not torch.nn.Linear"
        norms = [layer["input_norm"], layer["post_norm"], parts["final_norm"]]
        norms += [layer[n] for n in ("q_norm", "k_norm") if layer[n] is not None]
        if any(_eps(n) is None or getattr(n, "weight", None) is None for n in norms):
            return "a norm without weight or epsilon"
    return None


def _probe_refusal(model: nn.Module, record: DecoderRecord) -> str | None:
    """Run the first layer's norm, MLP and rotary as HF does and as the fused ops do, on a random probe."""
    parts = _parts(model, record)
    layer = _layer_modules(parts["layers"][0], record)
    weight = layer["o"].weight
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    # The classes' own forwards: the generic adapter may have rewired these instances to eet's ops.
    norms = [layer["input_norm"]] + [layer[n] for n in ("q_norm", "k_norm") if layer[n] is not None]
    for norm in norms:
        x = probe[..., : norm.weight.shape[0]]
        if not torch.equal(type(norm).forward(norm, x), reference.rms_norm(x, norm.weight, _eps(norm))):
            return f"{type(norm).__name__} does not compute HF Llama's RMSNorm"
    mlp = layer["mlp"]
    _, act = _ACTIVATIONS[record.activation]
    gate, up = torch.cat([linear(probe) for linear in layer["gate_up"]], dim=-1).chunk(2, dim=-1)
    if not torch.equal(type(mlp).forward(mlp, probe), layer["down"](act(gate) * up)):
        return f"{type(mlp).__name__} is not down({record.activation}(gate(x)) * up(x))"
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
    if not inspect.isfunction(getattr(sys.modules[type(layer["attn"]).__module__], "eager_attention_forward", None)):
        return "attention module without HF's attention interface"
    return None


def _head_dim(model: nn.Module, attn: nn.Module) -> int:
    config = model.config
    return getattr(attn, "head_dim", None) or config.hidden_size // config.num_attention_heads


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
        pack_rows(m["gate_up"])


def _build(model: nn.Module) -> FusedDecoder:
    record = RECORDS[model.config.model_type]
    parts = _parts(model, record)
    layers = []
    for layer in parts["layers"]:
        m = _layer_modules(layer, record)
        qkv_weight, qkv_bias = pack_rows(m["qkv"])
        gate_up_weight, gate_up_bias = pack_rows(m["gate_up"])
        layers.append(FusedLayer(
            qkv_weight=qkv_weight, qkv_bias=qkv_bias, input_norm=m["input_norm"].weight,
            input_eps=_eps(m["input_norm"]), q_norm=m["q_norm"].weight if m["q_norm"] is not None else None,
            k_norm=m["k_norm"].weight if m["k_norm"] is not None else None,
            qk_eps=_eps(m["q_norm"]) if m["q_norm"] is not None else 0.0, o_weight=m["o"].weight, o_bias=m["o"].bias,
            post_norm=m["post_norm"].weight, post_eps=_eps(m["post_norm"]), gate_up_weight=gate_up_weight,
            gate_up_bias=gate_up_bias, down_weight=m["down"].weight, down_bias=m["down"].bias,
        ))
    attn = _layer_modules(parts["layers"][0], record)["attn"]
    config = model.config
    heads = config.num_attention_heads
    return FusedDecoder(
        model=model, embed=parts["embed"], rotary=parts["rotary"], layers=tuple(layers),
        final_norm=parts["final_norm"].weight, final_eps=_eps(parts["final_norm"]), lm_head=parts["lm_head"],
        heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=_head_dim(model, attn),
        scale=float(getattr(attn, "scaling", _head_dim(model, attn) ** -0.5)),
        epilogue=_ACTIVATIONS[record.activation][0],
    )
