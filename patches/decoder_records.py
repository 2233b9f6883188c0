"""Decoder families eet's fused decoder step serves, described as data (eet_hf/engine/fused_decoder.py runs them).

A record names where a family keeps each part of a pre-norm decoder block — the attention projections, the two
norms, the MLP — and what arithmetic it uses (norm kind, MLP activation, rotary or not, where q is scaled). The engine
checks the names against the model's module tree and verifies the arithmetic numerically against HF's own modules
before it takes a model; anything that does not match keeps HF's layers in the engine (logged, `explain()`). What runs
before the first layer (token and position embeddings) is the family's entry in eet_hf/engine/decoder_families.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderRecord:
    base: str = "model"  # the decoder's path from the LM (dotted)
    layers: str = "layers"
    final_norm: str = "norm"  # the decoder's norm before the LM head
    rotary: str | None = "rotary_emb"  # module making (cos, sin) from the hidden states and position ids; None: none
    attention: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str | None = None  # one packed q|k|v projection instead of q, k, v (Phi-3)
    o: str = "o_proj"
    q_norm: str | None = None  # per-head RMSNorm of q and k before rotary (Qwen3)
    k_norm: str | None = None
    q_scale: bool = False  # q = q_proj(x) * attention.scaling, then attention with scale 1.0 (OPT)
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    mlp: str | None = "mlp"  # the module holding the MLP's projections; None: the layer itself (OPT's fc1 / fc2)
    gate: str | None = "gate_proj"  # None (and no gate_up): an ungated MLP, down(act(up(x)))
    up: str = "up_proj"
    gate_up: str | None = None  # one packed gate|up projection instead of gate, up (Phi-3)
    down: str = "down_proj"
    act: str | None = None  # the layer's activation module when the MLP is inline (mlp None), checked numerically
    projection: str = "linear"  # 'linear': nn.Linear [out, in]; 'conv1d': HF's Conv1D [in, out] (GPT-2), made a
    #                             transposed view of an [out, in] matrix once (engine/packing.py)
    norm: str = "rms"  # 'rms': HF Llama's RMSNorm, round(round(x * rsqrt(mean(x^2) + eps)) * w); 'layer': nn.LayerNorm
    activation: str = "silu"  # 'silu' / 'gelu_tanh' (gated: down(act(gate(x)) * up(x))), 'relu' / 'gelu_new' (ungated)
    rotary_form: str = "rotate_half"  # apply_rotary_pos_emb over the whole head (with rotary)
    config: tuple[tuple[str, object], ...] = ()  # config values the layout above assumes
    absent: tuple[str, ...] = ()  # modules of the decoder that must be None: parts the fused step has no place for


# Llama, Mistral and Qwen2 (q/k/v biases) share the layout; the engine reads biases where the modules have them.
LLAMA = DecoderRecord()
QWEN3 = DecoderRecord(q_norm="q_norm", k_norm="k_norm")
PHI3 = DecoderRecord(qkv="qkv_proj", gate_up="gate_up_proj")
# OPT (pre-LN: 125m, 1.3b, 2.7b and up): learned positions (the family's embedding), no rotary, q scaled after its
# projection, LayerNorms with biases, fc1 -> ReLU -> fc2 on the layer itself. Biases are read where the modules have
# them (enable_bias=False has none). OPT-350m (post-LN, project_in / project_out) is refused by `config` / `absent`.
OPT = DecoderRecord(
    base="model.decoder", final_norm="final_layer_norm", rotary=None, o="out_proj", q_scale=True,
    input_norm="self_attn_layer_norm", post_attention_norm="final_layer_norm", mlp=None, gate=None, up="fc1",
    down="fc2", act="activation_fn", norm="layer", activation="relu",
    config=(("do_layer_norm_before", True),), absent=("project_in", "project_out"),
)

# GPT-2: learned positions, no rotary, one c_attn projection (q|k|v) and Conv1D projections, LayerNorms, c_fc ->
# gelu_new -> c_proj. Per-layer attention scales and fp32 reordered attention are refused; so is cross-attention.
GPT2 = DecoderRecord(
    base="transformer", layers="h", final_norm="ln_f", rotary=None, attention="attn", qkv="c_attn", o="c_proj",
    input_norm="ln_1", post_attention_norm="ln_2", gate=None, up="c_fc", down="c_proj", norm="layer",
    activation="gelu_new", projection="conv1d",
    config=(("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
            ("add_cross_attention", False)),
)

RECORDS: dict[str, DecoderRecord] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": QWEN3,
    "phi3": PHI3,
    "opt": OPT,
    "gpt2": GPT2,
}
