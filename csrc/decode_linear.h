// Decode-step linear layers over nn.Linear weights (decode_linear.cu): out = epilogue(norm(x) @ W^T + bias) for
// 1-16 rows, W [rows, K] with K contiguous (Llama, Mistral, Qwen2: q/k/v, o, gate/up, down, lm_head).
// Plain pointers, sizes and a stream; no torch types (bindings_decode_linear.cpp checks the tensors).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace eet {

// What happens to y = x @ W^T + bias (fp32 accumulation, y rounded to the storage type T as HF's linear is):
// - kStore:       out = y
// - kResidual:    out = round(residual + y)                          (o_proj / down_proj + the residual add)
// - kSiluMul:     out = round(round(silu(y_gate)) * y_up)             (HF's act_fn(gate_proj(x)) * up_proj(x))
// - kGeluTanhMul: out = round(round(gelu_tanh(y_gate)) * y_up)        (Gemma's gelu_pytorch_tanh-gated MLP)
// - kRotaryKv:    q/k/v rows of a packed QKV projection; q and k rotated with HF's apply_rotary_pos_emb roundings,
//                 q written to out [m, heads_q, head_dim], k and v into the caches at write_pos[row]
// The gated epilogues read W as [gate; up] (gate rows 0..n_out-1, up rows n_out..2*n_out-1): the same packing as
// the packed parameter HF's gate_proj / up_proj weights are views of.
enum class DecodeEpilogue : int { kStore = 0, kResidual = 1, kSiluMul = 2, kGeluTanhMul = 3, kRotaryKv = 4 };

constexpr int64_t kDecodeLinearMaxRows = 16;

struct DecodeLinearParams {
  const void* x;            // [m, k], row stride ldx, 16-byte aligned rows
  const void* weight;       // [rows, k], row stride ldw (nn.Linear layout), 16-byte aligned rows
  const void* bias;         // [rows] or nullptr
  const void* norm_weight;  // [k] or nullptr: x is RMS-normalized first, HF Llama order (rmsnorm.cu)
  const void* residual;     // [m, n_out], row stride ld_res (kResidual), else nullptr
  void* out;                // [m, n_out] contiguous; kRotaryKv: q [m, heads_q * head_dim]
  int64_t m, rows, k, ldx, ldw, ld_res;
  float eps;
  DecodeEpilogue epilogue;
  // kRotaryKv only.
  const void* cos;            // [m, head_dim], row stride ld_cs
  const void* sin;            // [m, head_dim], row stride ld_cs
  void* k_cache;              // [m, heads_kv, cache_len, head_dim], strides k_stride (elements)
  void* v_cache;              // [m, heads_kv, cache_len, head_dim], strides v_stride (elements)
  const int32_t* write_pos;   // [m]: the cache slot each row's key and value go to; outside [0, cache_len): skipped
  int64_t ld_cs, cache_len;
  int64_t k_stride[3], v_stride[3];
  int heads_q, heads_kv, head_dim;
  int num_sms;  // the device's multiprocessor count: sizes the persistent grid
};

// Output columns of the epilogue: rows for kStore / kResidual, rows / 2 for the gated ones, heads_q * head_dim
// for kRotaryKv.
int64_t decode_linear_out_cols(const DecodeLinearParams& p);

// cudaErrorInvalidValue (nothing launched) for what the kernel does not take: fp32, m outside [1, 16], k not a
// multiple of 8, rows not a multiple of 16, a rotary head_dim not a multiple of 16.
cudaError_t decode_linear(DType dtype, const DecodeLinearParams& p, cudaStream_t stream);

}  // namespace eet
