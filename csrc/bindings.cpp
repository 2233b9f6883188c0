// CUDA implementations of the eet ops. The schemas are declared once, in eet_hf/ops/_library.py, so that
// machines without a GPU have the same ops (reference implementations); this file registers the CUDA
// kernels for them. The entry points live in bindings_norm_gelu.cpp, bindings_attention.cpp,
// bindings_embedding_kv.cpp, bindings_padding.cpp, bindings_rotary.cpp, bindings_small_linear.cpp and
// bindings_decode_linear.cpp (the only files besides this one
// that include torch):
// they check arguments with messages a user can act on, map dtypes, and launch on the current stream of the
// inputs' device under a device guard (bindings.h).
#include <torch/library.h>

#include "bindings.h"

TORCH_LIBRARY_IMPL(eet, CUDA, m) {
  // LayerNorm, GPT-2 ln_1 / ln_f.
  m.impl("layer_norm", &eet::bindings::layer_norm);
  // Residual add + LayerNorm: GPT-2 ln_2 (pre-LN) and BERT's output LayerNorms (post-LN).
  m.impl("add_layer_norm", &eet::bindings::add_layer_norm);
  // Bias + GELU after a GEMM without bias: GPT-2 and BERT MLPs.
  m.impl("bias_gelu", &eet::bindings::bias_gelu);
  // RMSNorm, HF Llama order: Llama / Mistral / Qwen2 norms through the generic adapter.
  m.impl("rms_norm", &eet::bindings::rms_norm);
  // Prefill and decode attention with masks from per-sequence bounds.
  m.impl("attention", &eet::bindings::attention);
  // Attention over packed (varlen) sequences: BERT's padding-free encoder path.
  m.impl("attention_varlen", &eet::bindings::attention_varlen);
  // Token + position embeddings: GPT-2 wte + wpe.
  m.impl("embedding", &eet::bindings::embedding);
  // Row-wise argmax: the greedy token choice of the decode engine over the LM head's logits.
  m.impl("argmax_rows", &eet::bindings::argmax_rows);
  // Attention-mask bookkeeping: each row's run of real keys (eet's mask function, the encoder's graph checks) and
  // the encoder's in-place packing plan.
  m.impl("padding_runs", &eet::bindings::padding_runs);
  m.impl("in_place_packing", &eet::bindings::in_place_packing);
  // Fused QKV (+ bias) split into q and the preallocated KV cache: GPT-2 c_attn output, prefill and decode.
  m.impl("kv_append", &eet::bindings::kv_append);
  // Rotary position embedding of q and k: Llama / Mistral / Qwen2 / GPT-NeoX attention in the decode engine.
  m.impl("rotary", &eet::bindings::rotary);
  // Small-batch (decode-step) linear layer, optional fused gelu_new: GPT-2's Conv1Ds at one row (gpt2_forward.py).
  m.impl("small_linear", &eet::bindings::small_linear);
  // Decode-step linear layers over nn.Linear weights (RMSNorm / LayerNorm prologue; residual / activation / rotary +
  // KV epilogues): the fused decoder step of Llama-style families and OPT (eet_hf/engine/fused_decoder.py).
  m.impl("decode_linear", &eet::bindings::decode_linear);
  m.impl("decode_qkv_rope", &eet::bindings::decode_qkv_rope);
  // [Per-head q/k RMSNorm +] [rotary +] KV write after the QKV projection: prompts, and Qwen3's decode steps.
  m.impl("qkv_rope_append", &eet::bindings::qkv_rope_append);
}
