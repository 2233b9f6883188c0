// Rotary on q and k and the KV-cache write after a packed QKV projection (qkv_rope_append.h), optionally after a
// per-head RMSNorm of q and k: the attention prologue of prompts (any sequence length; decode steps fuse it into the
// projection, decode_linear.cu) and of Qwen3-style models, whose q_norm / k_norm normalize each head over head_dim
// before rotary — a head's norm needs all its head_dim outputs, which the projection kernel spreads over blocks.
//
// One warp per (token, head) unit: lane l holds the rotary pairs (j, j + head_dim / 2) for j = l, l + 32, ..., so a
// head's norm is a warp sum and rotary needs no exchange between lanes. Units go to warps in token-major order (a
// token's heads are consecutive in memory), and a warp loads all its units before it stores any, so several loads
// are in flight per warp. (One block per (head, token), the earlier form, launched 98k blocks of 64 threads for an
// 8 x 128-token OPT-1.3B prompt: 119 µs per layer on an H100, bound by block launches, 37% of the prompt's GPU time.)
// HF's order and roundings: n = round(round(x * rsqrt(mean(x^2) + eps)) * w) (Qwen3RMSNorm, as Llama's; n = x without
// norms), then apply_rotary_pos_emb on the rounded n (rotary.cu; none without cos / sin: OPT), then q times q_scale
// when it is not 1 (OPT's `q_proj(x) * scaling`: round(round(q) * q_scale)); v is copied. Token s of sequence b is
// row b * seq + s and goes to cache slot write_pos[b] + s; slots outside the cache are skipped.
#include "common.cuh"
#include "qkv_rope_append.h"

namespace eet {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr int kPairSlots = kMaxHeadDim / 2 / 32;  // rotary pairs per lane
constexpr int kWarps = 8;                          // warps per block
constexpr int64_t kPromptUnits = 4096;            // above this many units, four per warp

// One unit's pairs after its loads: normalized, rotated, scaled and stored. lo / hi: x[j], x[j + half] for
// j = lane + 32 i (zeros past half).
template <typename T>
__device__ __forceinline__ void finish_unit(const QkvRopeAppendParams& p, int64_t row, int head,
                                            float (&lo)[kPairSlots], float (&hi)[kPairSlots]) {
  const int lane = threadIdx.x & 31, d = p.head_dim, half = d / 2;
  const bool is_q = head < p.heads_q, is_v = head >= p.heads_q + p.heads_kv;
  if (!is_v) {
    const T* w = static_cast<const T*>(is_q ? p.q_norm : p.k_norm);
    if (w != nullptr) {  // warp-uniform: the whole warp holds this unit
      float squares = 0.0f;
#pragma unroll
      for (int i = 0; i < kPairSlots; ++i) squares += lo[i] * lo[i] + hi[i] * hi[i];
      const float rstd = rsqrtf(warp_sum(squares) / static_cast<float>(d) + p.eps);
#pragma unroll
      for (int i = 0; i < kPairSlots; ++i) {
        const int j = lane + 32 * i;
        if (j < half) {
          lo[i] = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(lo[i], rstd)), to_float(w[j])));
          hi[i] = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(hi[i], rstd)), to_float(w[j + half])));
        }
      }
    }
    if (p.cos != nullptr) {
      const T* cs = static_cast<const T*>(p.cos) + row * p.ld_cs;
      const T* sn = static_cast<const T*>(p.sin) + row * p.ld_cs;
#pragma unroll
      for (int i = 0; i < kPairSlots; ++i) {
        const int j = lane + 32 * i;
        if (j < half) {  // rotate_half: the first half's partner is -x2, the second half's x1
          const float x1 = lo[i], x2 = hi[i];
          lo[i] = __fadd_rn(round_to<T>(__fmul_rn(x1, to_float(cs[j]))), round_to<T>(__fmul_rn(-x2, to_float(sn[j]))));
          hi[i] = __fadd_rn(round_to<T>(__fmul_rn(x2, to_float(cs[j + half]))),
                            round_to<T>(__fmul_rn(x1, to_float(sn[j + half]))));
        }
      }
    }
  }
  const int64_t b = row / p.seq, s = row - b * p.seq;
  T* dst;
  if (is_q) {
    dst = static_cast<T*>(p.q_out) + ((b * p.heads_q + head) * p.seq + s) * d;  // [batch, heads_q, seq, head_dim]
  } else {
    const int64_t slot = static_cast<int64_t>(p.write_pos[b]) + s;
    if (slot < 0 || slot >= p.cache_len) return;
    const int kv_head = is_v ? head - p.heads_q - p.heads_kv : head - p.heads_q;
    const int64_t* st = is_v ? p.v_stride : p.k_stride;
    dst = static_cast<T*>(is_v ? p.v_cache : p.k_cache) + b * st[0] + kv_head * st[1] + slot * st[2];
  }
#pragma unroll
  for (int i = 0; i < kPairSlots; ++i) {
    const int j = lane + 32 * i;
    if (j < half) {
      float a = lo[i], c = hi[i];
      if (is_q && p.q_scale != 1.0f) {
        a = __fmul_rn(round_to<T>(a), p.q_scale);
        c = __fmul_rn(round_to<T>(c), p.q_scale);
      }
      dst[j] = from_float<T>(a);
      dst[j + half] = from_float<T>(c);
    }
  }
}

// kUnits units per warp: 4 for prompts (four units' loads in flight per warp), 1 for decode steps (few units; the
// kernel is one round trip).
template <typename T, int kUnits>
__global__ void __launch_bounds__(kWarps * 32) qkv_rope_append_kernel(const QkvRopeAppendParams p) {
  const int lane = threadIdx.x & 31, half = p.head_dim / 2;
  const int heads = p.heads_q + 2 * p.heads_kv;
  const int64_t units = p.batch * p.seq * heads;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kUnits;
  pdl_trigger();
  pdl_wait();  // qkv comes from the projection kernel before this one
  float lo[kUnits][kPairSlots], hi[kUnits][kPairSlots];
#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
    const int64_t unit = first + u, row = unit / heads;
    const T* src = static_cast<const T*>(p.qkv) + row * p.ld_qkv + (unit - row * heads) * p.head_dim;
#pragma unroll
    for (int i = 0; i < kPairSlots; ++i) {
      const int j = lane + 32 * i;
      const bool ok = unit < units && j < half;
      lo[u][i] = ok ? to_float(src[j]) : 0.0f;
      hi[u][i] = ok ? to_float(src[j + half]) : 0.0f;
    }
  }
#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
    const int64_t unit = first + u, row = unit / heads;
    if (unit >= units) break;  // warp-uniform
    finish_unit<T>(p, row, static_cast<int>(unit - row * heads), lo[u], hi[u]);
  }
}

}  // namespace

cudaError_t qkv_rope_append(DType dtype, const QkvRopeAppendParams& p, cudaStream_t stream) {
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim || p.head_dim % 2 != 0 || p.heads_q <= 0 || p.heads_kv <= 0 ||
      p.batch <= 0 || p.seq <= 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t units = p.batch * p.seq * (p.heads_q + 2 * p.heads_kv);
  const bool prompt = units > kPromptUnits;
  const int64_t per_block = kWarps * (prompt ? 4 : 1);
  const int64_t blocks = (units + per_block - 1) / per_block;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return prompt ? launch_pdl(qkv_rope_append_kernel<T, 4>, grid, block, 0, stream, 1, p)
                  : launch_pdl(qkv_rope_append_kernel<T, 1>, grid, block, 0, stream, 1, p);
  });
}

}  // namespace eet
