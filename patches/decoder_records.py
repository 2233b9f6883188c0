"""Decoder families eet's fused decoder step serves, described as data (eet_hf/engine/fused_decoder.py runs them).

A record names where a family keeps each part of a pre-norm decoder block — the attention projections, the two
norms, the gated MLP — and what arithmetic it uses (norm kind, MLP activation, rotary form). The engine checks the
names against the model's module tree and verifies norm, MLP and rotary numerically against HF's own modules
before it takes a model; anything that does not match keeps HF's layers in the engine (logged, `explain()`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderRecord:
    base: str = "model"  # the LM's attribute holding the decoder
    embed: str = "embed_tokens"
    layers: str = "layers"
    final_norm: str = "norm"
    rotary: str = "rotary_emb"  # module making (cos, sin) from the hidden states and position ids
    attention: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str | None = None  # one packed q|k|v projection instead of q, k, v (Phi-3)
    o: str = "o_proj"
    q_norm: str | None = None  # per-head RMSNorm of q and k before rotary (Qwen3)
    k_norm: str | None = None
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    mlp: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    gate_up: str | None = None  # one packed gate|up projection instead of gate, up (Phi-3)
    down: str = "down_proj"
    norm: str = "rms"  # RMSNorm in HF Llama order: round(round(x * rsqrt(mean(x^2) + eps)) * w)
    activation: str = "silu"  # MLP: down(act(gate(x)) * up(x)); 'silu' or 'gelu_tanh'
    rotary_form: str = "rotate_half"  # apply_rotary_pos_emb over the whole head


# Llama, Mistral and Qwen2 (q/k/v biases) share the layout; the engine reads biases where the modules have them.
LLAMA = DecoderRecord()
QWEN3 = DecoderRecord(q_norm="q_norm", k_norm="k_norm")
PHI3 = DecoderRecord(qkv="qkv_proj", gate_up="gate_up_proj")

RECORDS: dict[str, DecoderRecord] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": QWEN3,
    "phi3": PHI3,
}
