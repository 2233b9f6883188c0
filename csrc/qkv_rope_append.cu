// Rotary on q and k and the KV-cache write after a packed QKV projection (qkv_rope_append.h), optionally after a
// per-head RMSNorm of q and k: the attention prologue of prompts (any sequence length; decode steps fuse it into the
// projection, decode_linear.cu) and of Qwen3-style models, whose q_norm / k_norm normalize each head over head_dim
// before rotary — a head's norm needs all its head_dim outputs, which the projection kernel spreads over blocks.
//
// One block per (head, token): q heads, then k heads, then v heads of a [rows, (heads_q + 2 heads_kv) * head_dim]
// input. HF's order and roundings: n = round(round(x * rsqrt(mean(x^2) + eps)) * w) (Qwen3RMSNorm, as Llama's; n = x
// without norms), then apply_rotary_pos_emb on the rounded n (rotary.cu; none without cos / sin: OPT), then q times
// q_scale when it is not 1 (OPT's `q_proj(x) * scaling`: round(round(q) * q_scale)); v is copied. Token s of sequence
// b is row b * seq + s and goes to cache slot write_pos[b] + s; slots outside the cache are skipped.
#include "common.cuh"
#include "qkv_rope_append.h"

namespace eet {
namespace {

constexpr int kMaxHeadDim = 256;

template <typename T>
__global__ void __launch_bounds__(kMaxHeadDim) qkv_rope_append_kernel(const QkvRopeAppendParams p) {
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
  if (!is_v) {  // block-uniform: every thread takes part in the reduction and the barrier
    const T* w = static_cast<const T*>(is_q ? p.q_norm : p.k_norm);
    if (w != nullptr) {
      const float rstd = rsqrtf(block_sum(v * v, scratch) / static_cast<float>(d) + p.eps);
      if (tid < d) normed[tid] = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(v, rstd)), to_float(w[tid])));
    } else if (tid < d) {
      normed[tid] = v;
    }
    __syncthreads();
    if (tid < d && p.cos == nullptr) {
      v = normed[tid];
    } else if (tid < d) {
      const T* cs = static_cast<const T*>(p.cos) + row * p.ld_cs;
      const T* sn = static_cast<const T*>(p.sin) + row * p.ld_cs;
      const float partner = tid < half ? -normed[tid + half] : normed[tid - half];
      v = __fadd_rn(round_to<T>(__fmul_rn(normed[tid], to_float(cs[tid]))),
                    round_to<T>(__fmul_rn(partner, to_float(sn[tid]))));
    }
  }
  if (tid >= d) return;
  if (is_q) {
    if (p.q_scale != 1.0f) v = __fmul_rn(round_to<T>(v), p.q_scale);
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

cudaError_t qkv_rope_append(DType dtype, const QkvRopeAppendParams& p, cudaStream_t stream) {
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim || p.head_dim % 2 != 0 || p.heads_q <= 0 || p.heads_kv <= 0 ||
      p.batch <= 0 || p.seq <= 0 || p.batch * p.seq > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(p.heads_q + 2 * p.heads_kv), static_cast<unsigned>(p.batch * p.seq));
  const dim3 block(static_cast<unsigned>((p.head_dim + 31) / 32 * 32));
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_pdl(qkv_rope_append_kernel<T>, grid, block, 0, stream, 1, p);
  });
}

}  // namespace eet
