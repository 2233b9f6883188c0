// [Rotary +] KV-cache write after a packed QKV projection, optionally after a per-head q/k RMSNorm (qkv_rope_append.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace eet {

struct QkvRopeAppendParams {
  const void* qkv;           // [batch * seq, (heads_q + 2 * heads_kv) * head_dim], row stride ld_qkv
  const void* q_norm;        // [head_dim], or nullptr together with k_norm: no per-head norm
  const void* k_norm;        // [head_dim] or nullptr
  const void* cos;           // [batch * seq, head_dim], row stride ld_cs; nullptr together with sin: no rotary
  const void* sin;           // [batch * seq, head_dim], row stride ld_cs
  void* q_out;               // [batch, heads_q, seq, head_dim] contiguous
  void* k_cache;             // [batch, heads_kv, cache_len, head_dim], strides k_stride (elements)
  void* v_cache;             // [batch, heads_kv, cache_len, head_dim], strides v_stride
  const int32_t* write_pos;  // [batch]: slot of each sequence's first token
  int64_t ld_qkv, ld_cs, batch, seq, cache_len;
  int64_t k_stride[3], v_stride[3];
  float eps;
  float q_scale;  // q times q_scale after rotary (1: as it is)
  int heads_q, heads_kv, head_dim;
};

// cudaErrorInvalidValue (nothing launched) for head_dim > 256 or odd.
cudaError_t qkv_rope_append(DType dtype, const QkvRopeAppendParams& p, cudaStream_t stream);

}  // namespace eet
