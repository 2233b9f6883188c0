// Rotary on q and k and the KV-cache write after a packed QKV projection (qkv_rope_append.h), optionally after a
// per-head RMSNorm of q and k: the attention prologue of prompts (any sequence length; decode steps fuse it into the
// projection, decode_linear.cu) and of Qwen3-style models, whose q_norm / k_norm normalize each head over head_dim
// before rotary — a head's norm needs all its head_dim outputs, which the projection kernel spreads over blocks.
//
// Two forms. For prompts where head_dim and every pointer and stride allow 16-byte accesses (any fused family's usual
// shapes), a few lanes share a unit, each holding consecutive pairs (qkv_rope_append_vec_kernel). Elsewhere, one warp per
// (token, head) unit: lane l holds the rotary pairs (j, j + head_dim / 2) for j = l, l + 32, ..., so a
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

// The per-pair steps both kernels apply to a rotary pair (x1, x2) = (x[j], x[j + head_dim / 2]), in HF's roundings.
template <typename T>
__device__ __forceinline__ void norm_pair(float& x1, float& x2, float rstd, float w1, float w2) {
  x1 = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(x1, rstd)), w1));
  x2 = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(x2, rstd)), w2));
}

// rotate_half: the first half's partner is -x2, the second half's x1.
template <typename T>
__device__ __forceinline__ void rotate_pair(float& x1, float& x2, float cos1, float cos2, float sin1, float sin2) {
  const float a = x1, b = x2;
  x1 = __fadd_rn(round_to<T>(__fmul_rn(a, cos1)), round_to<T>(__fmul_rn(-b, sin1)));
  x2 = __fadd_rn(round_to<T>(__fmul_rn(b, cos2)), round_to<T>(__fmul_rn(a, sin2)));
}

template <typename T>
__device__ __forceinline__ void scale_pair(float& x1, float& x2, float q_scale) {
  if (q_scale == 1.0f) return;
  x1 = __fmul_rn(round_to<T>(x1), q_scale);
  x2 = __fmul_rn(round_to<T>(x2), q_scale);
}

// Where head `head` of row `row` goes: q_out [batch, heads_q, seq, head_dim], or its cache slot; nullptr for a slot
// outside the cache (skipped).
template <typename T>
__device__ __forceinline__ T* unit_destination(const QkvRopeAppendParams& p, int64_t row, int head) {
  const int64_t b = row / p.seq, s = row - b * p.seq;
  if (head < p.heads_q) return static_cast<T*>(p.q_out) + ((b * p.heads_q + head) * p.seq + s) * p.head_dim;
  const int64_t slot = static_cast<int64_t>(p.write_pos[b]) + s;
  if (slot < 0 || slot >= p.cache_len) return nullptr;
  const bool is_v = head >= p.heads_q + p.heads_kv;
  const int kv_head = head - p.heads_q - (is_v ? p.heads_kv : 0);
  const int64_t* st = is_v ? p.v_stride : p.k_stride;
  return static_cast<T*>(is_v ? p.v_cache : p.k_cache) + b * st[0] + kv_head * st[1] + slot * st[2];
}

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
        if (j < half) norm_pair<T>(lo[i], hi[i], rstd, to_float(w[j]), to_float(w[j + half]));
      }
    }
    if (p.cos != nullptr) {
      const T* cs = static_cast<const T*>(p.cos) + row * p.ld_cs;
      const T* sn = static_cast<const T*>(p.sin) + row * p.ld_cs;
#pragma unroll
      for (int i = 0; i < kPairSlots; ++i) {
        const int j = lane + 32 * i;
        if (j < half) {
          rotate_pair<T>(lo[i], hi[i], to_float(cs[j]), to_float(cs[j + half]), to_float(sn[j]), to_float(sn[j + half]));
        }
      }
    }
  }
  T* dst = unit_destination<T>(p, row, head);
  if (dst == nullptr) return;
#pragma unroll
  for (int i = 0; i < kPairSlots; ++i) {
    const int j = lane + 32 * i;
    if (j < half) {
      if (is_q) scale_pair<T>(lo[i], hi[i], p.q_scale);
      dst[j] = from_float<T>(lo[i]);
      dst[j + half] = from_float<T>(hi[i]);
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

constexpr int kVecRounds = 2;  // units per lane group in flight in the 16-byte form

// The 16-byte form, where head_dim and every pointer and stride allow it: kLPU lanes share a unit, lane `sub` holding
// the kVec consecutive pairs from j0 = sub * kVec (a 16-byte load from each half of the head), so a warp holds
// 32 / kLPU units per round and kRounds rounds' loads are in flight before the first store. The norm's sum of squares
// is a butterfly over the unit's lanes. (The scalar kernel's 2-byte accesses, one pair per lane per load, moved an
// 8 x 128-token OPT-1.3B prompt's q, k and v at ~0.7 TB/s: 36 µs per layer, ttft-anatomy-h100.md.)
template <typename T, int kLPU>
__global__ void __launch_bounds__(kWarps * 32) qkv_rope_append_vec_kernel(const QkvRopeAppendParams p) {
  constexpr int kVec = kVec16<T>, kGroups = 32 / kLPU, kRounds = kVecRounds;
  const int lane = threadIdx.x & 31, sub = lane % kLPU, half = p.head_dim / 2, j0 = sub * kVec;
  const int heads = p.heads_q + 2 * p.heads_kv;
  const int64_t units = p.batch * p.seq * heads;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kGroups * kRounds +
                        lane / kLPU;
  const bool holds = j0 < half;  // lanes past the head's pairs (head_dim / 2 not a power-of-two multiple) idle
  pdl_trigger();
  pdl_wait();  // qkv comes from the projection kernel before this one
  float lo[kRounds][kVec], hi[kRounds][kVec];
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const int64_t unit = first + r * kGroups, row = unit / heads;
    if (unit < units && holds) {
      const T* src = static_cast<const T*>(p.qkv) + row * p.ld_qkv + (unit - row * heads) * p.head_dim + j0;
      load_float<kVec>(src, lo[r]);
      load_float<kVec>(src + half, hi[r]);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) lo[r][e] = hi[r][e] = 0.0f;
    }
  }
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const int64_t unit = first + r * kGroups, row = unit / heads;
    const int head = static_cast<int>(unit - row * heads);
    const bool is_q = head < p.heads_q, is_v = head >= p.heads_q + p.heads_kv;
    if (p.q_norm != nullptr) {  // warp-uniform, so every lane takes part in the butterfly
      float squares = 0.0f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) squares += lo[r][e] * lo[r][e] + hi[r][e] * hi[r][e];
#pragma unroll
      for (int o = kLPU / 2; o > 0; o /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, o);
      if (!is_v && holds) {
        const float rstd = rsqrtf(squares / static_cast<float>(p.head_dim) + p.eps);
        float w1[kVec], w2[kVec];
        const T* w = static_cast<const T*>(is_q ? p.q_norm : p.k_norm) + j0;
        load_float<kVec>(w, w1);
        load_float<kVec>(w + half, w2);
#pragma unroll
        for (int e = 0; e < kVec; ++e) norm_pair<T>(lo[r][e], hi[r][e], rstd, w1[e], w2[e]);
      }
    }
    if (unit >= units || !holds) continue;
    if (!is_v && p.cos != nullptr) {
      float c1[kVec], c2[kVec], s1[kVec], s2[kVec];
      const T* cs = static_cast<const T*>(p.cos) + row * p.ld_cs + j0;
      const T* sn = static_cast<const T*>(p.sin) + row * p.ld_cs + j0;
      load_float<kVec>(cs, c1);
      load_float<kVec>(cs + half, c2);
      load_float<kVec>(sn, s1);
      load_float<kVec>(sn + half, s2);
#pragma unroll
      for (int e = 0; e < kVec; ++e) rotate_pair<T>(lo[r][e], hi[r][e], c1[e], c2[e], s1[e], s2[e]);
    }
    T* dst = unit_destination<T>(p, row, head);
    if (dst == nullptr) continue;
    if (is_q) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) scale_pair<T>(lo[r][e], hi[r][e], p.q_scale);
    }
    store_float<kVec>(dst + j0, lo[r]);
    store_float<kVec>(dst + j0 + half, hi[r]);
  }
}

// Whether the 16-byte kernel may run: every row, head and half of a head starts on a 16-byte boundary.
bool vector_ok(const QkvRopeAppendParams& p, int elem_bytes) {
  const int vec = 16 / elem_bytes;
  const bool strides = p.ld_qkv % vec == 0 && p.ld_cs % vec == 0 && p.k_stride[0] % vec == 0 &&
                       p.k_stride[1] % vec == 0 && p.k_stride[2] % vec == 0 && p.v_stride[0] % vec == 0 &&
                       p.v_stride[1] % vec == 0 && p.v_stride[2] % vec == 0;
  return p.head_dim % (2 * vec) == 0 && strides && is_aligned(p.qkv, 16) && is_aligned(p.q_out, 16) &&
         is_aligned(p.k_cache, 16) && is_aligned(p.v_cache, 16) && is_aligned(p.cos, 16) && is_aligned(p.sin, 16) &&
         is_aligned(p.q_norm, 16) && is_aligned(p.k_norm, 16);
}

// The 16-byte kernel for T with the lanes per unit its head_dim needs (kVec pairs each, a power of two).
template <typename T>
cudaError_t launch_vector(const QkvRopeAppendParams& p, int64_t units, cudaStream_t stream) {
  const int pairs_per_lane_group = p.head_dim / 2 / kVec16<T>;
  const int lpu = pairs_per_lane_group <= 2 ? 2 : pairs_per_lane_group <= 4 ? 4 : pairs_per_lane_group <= 8 ? 8
                  : pairs_per_lane_group <= 16 ? 16 : 32;
  const int64_t per_block = static_cast<int64_t>(kWarps) * (32 / lpu) * kVecRounds;
  const int64_t blocks = (units + per_block - 1) / per_block;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  switch (lpu) {
    case 2: return launch_pdl(qkv_rope_append_vec_kernel<T, 2>, grid, block, 0, stream, 1, p);
    case 4: return launch_pdl(qkv_rope_append_vec_kernel<T, 4>, grid, block, 0, stream, 1, p);
    case 8: return launch_pdl(qkv_rope_append_vec_kernel<T, 8>, grid, block, 0, stream, 1, p);
    case 16: return launch_pdl(qkv_rope_append_vec_kernel<T, 16>, grid, block, 0, stream, 1, p);
    default: return launch_pdl(qkv_rope_append_vec_kernel<T, 32>, grid, block, 0, stream, 1, p);
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
  // Decode steps (Qwen3's few units) keep the scalar form: one round trip either way, and the one measured there.
  if (prompt && vector_ok(p, dtype == DType::kFloat32 ? 4 : 2)) {
    return dispatch_dtype(dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      return launch_vector<T>(p, units, stream);
    });
  }
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
