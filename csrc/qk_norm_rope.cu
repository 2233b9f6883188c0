// Per-head RMSNorm of q and k, rotary, and the KV-cache write, after a packed QKV projection (qk_norm_rope.h): the
// attention prologue of Qwen3-style models, whose q_norm / k_norm normalize each head over head_dim before rotary.
// The projection itself is decode_linear (with the input RMSNorm in its prologue); a head's norm needs all its
// head_dim outputs, which that kernel spreads over blocks, so this small kernel follows it.
//
// One block per (head, token): q heads, then k heads, then v heads of a [rows, (heads_q + 2 heads_kv) * head_dim]
// input. HF's order and roundings: n = round(round(x * rsqrt(mean(x^2) + eps)) * w) (Qwen3RMSNorm, as Llama's), then
// apply_rotary_pos_emb on the rounded n (rotary.cu); v is copied. Token s of sequence b is row b * seq + s and goes to
// cache slot write_pos[b] + s; slots outside the cache are skipped.
#include "common.cuh"
#include "qk_norm_rope.h"

namespace eet {
namespace {

constexpr int kMaxHeadDim = 256;

template <typename T>
__global__ void __launch_bounds__(kMaxHeadDim) qk_norm_rope_kernel(const QkNormRopeParams p) {
  __shared__ float normed[kMaxHeadDim];
  __shared__ float scratch[32];
  const int tid = threadIdx.x, d = p.head_dim, half = d / 2;
  const int head = blockIdx.x;
  const int64_t row = blockIdx.y, b = row / p.seq, s = row % p.seq;
  const bool is_q = head < p.heads_q, is_v = head >= p.heads_q + p.heads_kv;
  pdl_trigger();
  pdl_wait();  // qkv comes from the projection kernel before this one
  const T* src = static_cast<const T*>(p.qkv) + row * p.ld_qkv + static_cast<int64_t>(head) * d;
  float v = tid < d ? to_float(src[tid]) : 0.0f;
  if (!is_v) {  // block-uniform: every thread takes part in the reduction
    const float rstd = rsqrtf(block_sum(v * v, scratch) / static_cast<float>(d) + p.eps);
    const T* w = static_cast<const T*>(is_q ? p.q_norm : p.k_norm);
    if (tid < d) normed[tid] = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(v, rstd)), to_float(w[tid])));
    __syncthreads();
    if (tid < d) {
      const T* cs = static_cast<const T*>(p.cos) + row * p.ld_cs;
      const T* sn = static_cast<const T*>(p.sin) + row * p.ld_cs;
      const float partner = tid < half ? -normed[tid + half] : normed[tid - half];
      v = __fadd_rn(round_to<T>(__fmul_rn(normed[tid], to_float(cs[tid]))),
                    round_to<T>(__fmul_rn(partner, to_float(sn[tid]))));
    }
  }
  if (tid >= d) return;
  if (is_q) {
    // q_out [batch, heads_q, seq, head_dim]
    static_cast<T*>(p.q_out)[((b * p.heads_q + head) * p.seq + s) * d + tid] = from_float<T>(v);
    return;
  }
  const int64_t slot = static_cast<int64_t>(p.write_pos[b]) + s;
  if (slot < 0 || slot >= p.cache_len) return;
  const int kv_head = is_v ? head - p.heads_q - p.heads_kv : head - p.heads_q;
  const int64_t* st = is_v ? p.v_stride : p.k_stride;
  T* cache = static_cast<T*>(is_v ? p.v_cache : p.k_cache);
  cache[b * st[0] + kv_head * st[1] + slot * st[2] + tid] = from_float<T>(v);
}

}  // namespace

cudaError_t qk_norm_rope(DType dtype, const QkNormRopeParams& p, cudaStream_t stream) {
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim || p.head_dim % 2 != 0 || p.heads_q <= 0 || p.heads_kv <= 0 ||
      p.batch <= 0 || p.seq <= 0 || p.batch * p.seq > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(p.heads_q + 2 * p.heads_kv), static_cast<unsigned>(p.batch * p.seq));
  const dim3 block(static_cast<unsigned>((p.head_dim + 31) / 32 * 32));
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_pdl(qk_norm_rope_kernel<T>, grid, block, 0, stream, 1, p);
  });
}

}  // namespace eet
