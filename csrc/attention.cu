// eet::attention: checks the parameters and dispatches to the prefill kernels (flash-attention over query
// tiles, attention_prefill.cu) or, for a few query rows, to the split-K decode kernels
// (attention_decode.cu). Both compute the mask from kv_start / kv_end / q_offset in-kernel (kernels.h);
// neither allocates, synchronizes or reads device memory on the host, so both are graph-capture safe.
#include <cuda_runtime.h>

#include <cstdint>

#include "attention_kernels.h"
#include "kernels.h"

namespace eet {

namespace attn {

namespace {

bool tensor_vector_ok(const void* ptr, int64_t stride_b, int64_t stride_h, int64_t stride_s, int batch, int heads,
                      int len, size_t elem_size) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  const int64_t vec = static_cast<int64_t>(16 / elem_size);
  // A stride of a dimension of size 1 is never used to step, so it may be anything.
  if (batch > 1 && stride_b % vec != 0) return false;
  if (heads > 1 && stride_h % vec != 0) return false;
  if (len > 1 && stride_s % vec != 0) return false;
  return true;
}

}  // namespace

bool vector_loads_ok(const AttentionParams& p, size_t elem_size) {
  return tensor_vector_ok(p.q, p.q_stride_b, p.q_stride_h, p.q_stride_s, p.batch, p.heads_q, p.q_len, elem_size) &&
         tensor_vector_ok(p.k, p.k_stride_b, p.k_stride_h, p.k_stride_s, p.batch, p.heads_kv, p.kv_len, elem_size) &&
         tensor_vector_ok(p.v, p.v_stride_b, p.v_stride_h, p.v_stride_s, p.batch, p.heads_kv, p.kv_len, elem_size);
}

}  // namespace attn

namespace {

// The decode kernels know only the padded layout; packed (varlen) sequences always take the prefill kernels.
bool use_decode(const AttentionParams& p) { return p.cu_seqlens == nullptr && p.q_len <= attn::kDecodeMaxQLen; }

size_t dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace

bool attention_supports_head_dim(int head_dim) { return attn::supported_head_dim(head_dim); }

size_t attention_workspace_bytes(const AttentionParams& p, int num_sms) {
  if (!attn::supported_head_dim(p.head_dim) || p.batch <= 0 || p.heads_q <= 0 || p.q_len <= 0) return 0;
  if (p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0) return 0;
  return use_decode(p) ? attn::decode_workspace_bytes(p, num_sms) : 0;
}

cudaError_t attention(DType dtype, const AttentionParams& p, int num_sms, cudaStream_t stream) {
  if (!attn::supported_head_dim(p.head_dim)) return cudaErrorInvalidValue;
  if (p.batch < 0 || p.heads_q < 0 || p.q_len < 0 || p.kv_len < 0) return cudaErrorInvalidValue;
  if (p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0) return cudaErrorInvalidValue;
  if (p.batch == 0 || p.heads_q == 0 || p.q_len == 0) return cudaSuccess;  // empty output
  if (p.out == nullptr) return cudaErrorInvalidValue;
  const bool bounds_given = p.kv_start != nullptr && p.kv_end != nullptr && p.q_offset != nullptr;
  if (p.cu_seqlens == nullptr && !bounds_given) return cudaErrorInvalidValue;
  const bool aligned = attn::vector_loads_ok(p, dtype_size(dtype));
  if (use_decode(p)) return attn::launch_decode(dtype, p, aligned, num_sms, stream);
  return attn::launch_prefill(dtype, p, aligned, num_sms, stream);
}

}  // namespace eet
