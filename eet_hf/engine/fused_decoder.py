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
q scale) reproduced HF's modules on a probe input (`refusal`, fused_decoder_refusal.py); the engine's tokens are tested against HF's for every
family (tests/test_fused_decoder.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from eet_hf import ops
from eet_hf._log import warn_once
from eet_hf.ops import decode as decode_ops
from eet_hf.patches.decoder_records import RECORDS

from . import decoder_families
from .decode_model import ModelView, StepBounds
from .decoder_parts import ACTIVATIONS, heads_of, layer_modules, model_parts, norm_bias, norm_eps, projection_weights

# Rotary tables per rotary module: (capacity, dtype, device, inv_freq address) -> (cos, sin) [capacity, head_dim].
# Kept across calls (one per cache capacity, a few KB each), since a captured decode graph reads the table it was
# captured with.
_ROPE_TABLES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary())


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


def build(model: nn.Module, fallback: Callable[[nn.Module], ModelView] = decoder_families.decoder_stack) -> ModelView:
    """The engine's view of `model`: the fused step (projections packed as views when not packed yet), or, if its
    kernels disagree with their references on a probe step (`kernel_check`), `fallback(model)` (HF's layers in the
    engine; eet's lean forward for GPT-2)."""
    view = _build(model)
    reason = kernel_check(view)
    if reason is None:
        return view
    name = getattr(fallback, "func", fallback).__name__  # a functools.partial names its function
    warn_once(f"fused decoder step on {model.config.model_type}: {reason}; the engine runs {name} instead")
    return fallback(model)


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
    """Lay out every layer's projections as the fused step reads them: q/k/v and gate/up packed into one matrix each,
    Conv1D weights transposed (HF's parameters become views; idempotent)."""
    record = RECORDS[model.config.model_type]
    for layer in model_parts(model, record)["layers"]:
        m = layer_modules(layer, record)
        for modules in (m["qkv"], [m["o"]], m["up"], [m["down"]]):
            projection_weights(modules, record)


def describe(model: nn.Module) -> str:
    """The explain() line of the fused step for this model's record."""
    record = RECORDS[model.config.model_type]
    activation = ACTIVATIONS[record.activation]
    norm = {"rms": "RMSNorm", "layer": "LayerNorm"}[record.norm]
    prologue = " + rotary" if record.rotary else ""
    prologue += " + q scale" if record.q_scale else ""
    mlp = f"{record.activation}-gated MLP" if activation.gated else f"{record.activation} MLP"
    return f"decoder step (eet fused: {norm} + packed QKV{prologue} + KV write, {mlp})"


def _build(model: nn.Module) -> FusedDecoder:
    record = RECORDS[model.config.model_type]
    parts = model_parts(model, record)
    layers = []
    for layer in parts["layers"]:
        m = layer_modules(layer, record)
        qkv_weight, qkv_bias = projection_weights(m["qkv"], record)
        o_weight, o_bias = projection_weights([m["o"]], record)
        up_weight, up_bias = projection_weights(m["up"], record)
        down_weight, down_bias = projection_weights([m["down"]], record)
        layers.append(FusedLayer(
            qkv_weight=qkv_weight, qkv_bias=qkv_bias, input_norm=m["input_norm"].weight,
            input_norm_bias=norm_bias(m["input_norm"], record), input_eps=norm_eps(m["input_norm"]),
            q_norm=m["q_norm"].weight if m["q_norm"] is not None else None,
            k_norm=m["k_norm"].weight if m["k_norm"] is not None else None,
            qk_eps=norm_eps(m["q_norm"]) if m["q_norm"] is not None else 0.0, o_weight=o_weight, o_bias=o_bias,
            post_norm=m["post_norm"].weight, post_norm_bias=norm_bias(m["post_norm"], record),
            post_eps=norm_eps(m["post_norm"]), up_weight=up_weight, up_bias=up_bias, down_weight=down_weight,
            down_bias=down_bias,
        ))
    attn = layer_modules(parts["layers"][0], record)["attn"]
    heads, kv_heads, head_dim = heads_of(model, attn)
    scaling = float(getattr(attn, "scaling", head_dim**-0.5))
    family = decoder_families.FAMILIES[model.config.model_type](model)
    return FusedDecoder(
        model=model, embed=family["embed"], rotary=parts["rotary"], layers=tuple(layers),
        final_norm=parts["final_norm"].weight, final_norm_bias=norm_bias(parts["final_norm"], record),
        final_eps=norm_eps(parts["final_norm"]), lm_head=parts["lm_head"], heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, scale=1.0 if record.q_scale else scaling, q_scale=scaling if record.q_scale else 1.0,
        norm=record.norm, epilogue=ACTIVATIONS[record.activation].epilogue, width=model.config.hidden_size,
        max_positions=family["max_positions"],
    )
