// Prefill attention for fp32: a SIMT kernel with the tiling and masking of the tensor-core kernel
// (attention_prefill_mma.cu); no fp32 tensor-core path keeps fp32 accuracy. One block owns a tile of query rows
// of one (batch, query head) and walks the key/value tiles of the visible range only. The packed (varlen)
// layout runs the same kernel (attention_prefill.cuh).
//
// Masking inside a tile: score = -inf for an invisible key; the running max is replaced by 0 in the
// exponent while it is still -inf, so a row that has seen no visible key yet accumulates exactly 0 and
// never NaN; at the end a row with a zero sum writes zeros.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_common.cuh"
#include "attention_kernels.h"
#include "attention_prefill.cuh"
#include "common.cuh"

namespace eet {
namespace attn {
namespace {

// ------------------------------------------------------------------------------------------------
// SIMT kernel (fp32). 4 warps x 8 query rows, 32 keys per tile; lane = key for the scores, lane = head
// dim (strided by 32) for the output accumulator.

template <int D>
struct SimtConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerWarp = 8;
  static constexpr int kBr = kWarps * kRowsPerWarp;
  static constexpr int kBc = 32;
  static constexpr int kKStride = D + 4;  // float4 reads of one row per lane: conflict-free
  static constexpr int kDPerLane = (D + 31) / 32;
  static constexpr int kSmemFloats = kBr * D + kBc * kKStride + kBc * D + kWarps * kRowsPerWarp * kBc;
};

template <int D>
__global__ void __launch_bounds__(SimtConfig<D>::kThreads)
    prefill_simt_kernel(const AttentionParams p, const int aligned_flag) {
  using C = SimtConfig<D>;
  constexpr int kBr = C::kBr, kBc = C::kBc, kThreads = C::kThreads, R = C::kRowsPerWarp;
  constexpr int kKS = C::kKStride, DL = C::kDPerLane;
  static_assert(D % 4 == 0, "head_dim must be a multiple of 4");

  extern __shared__ uint4 smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);  // [kBr][D]
  float* sK = sQ + kBr * D;                         // [kBc][kKS]
  float* sV = sK + kBc * kKS;                       // [kBc][D]
  float* sP = sV + kBc * D;                         // [kWarps][R][kBc]

  const bool aligned = aligned_flag != 0;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;

  const int num_mblocks = (p.q_len + kBr - 1) / kBr;
  int mb, h, b;
  decode_block(p, num_mblocks, mb, h, b);
  const SeqRows sr = seq_rows(p, b);
  const int m0 = mb * kBr;
  if (m0 >= sr.q_len) return;  // packed: a tile past this sequence's own length
  const int m_end = min(m0 + kBr, sr.q_len);
  const TileRange rg = tile_range(p, sr, b, m0, m_end);
  if (rg.hi <= rg.lo) {
    write_zero_rows<float, D, kThreads>(p, sr.out_row0, h, m0, m_end, tid);
    return;
  }
  const int hk = h / (p.heads_q / p.heads_kv);
  const float* qb = static_cast<const float*>(p.q) + sr.q_base + h * p.q_stride_h + m0 * p.q_stride_s;
  const float* kb = static_cast<const float*>(p.k) + sr.k_base + hk * p.k_stride_h;
  const float* vb = static_cast<const float*>(p.v) + sr.v_base + hk * p.v_stride_h;

  // Q tile (rows past q_len are zero).
  for (int idx = tid; idx < kBr * (D / 4); idx += kThreads) {
    const int r = idx / (D / 4);
    const int c = (idx - r * (D / 4)) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (m0 + r < m_end) {
      const float* src = qb + static_cast<int64_t>(r) * p.q_stride_s + c;
      v = aligned ? *reinterpret_cast<const float4*>(src) : make_float4(src[0], src[1], src[2], src[3]);
    }
    *reinterpret_cast<float4*>(sQ + r * D + c) = v;
  }

  const float scale_log2 = p.scale * kLog2e;
  const int row_base = m0 + warp * R;
  const float* sQw = sQ + warp * R * D;
  float* sPw = sP + warp * R * kBc;

  float acc[R][DL];
  float row_max[R], lsum[R];  // lsum: this lane's share of the row sum
#pragma unroll
  for (int r = 0; r < R; ++r) {
    row_max[r] = -INFINITY;
    lsum[r] = 0.f;
#pragma unroll
    for (int c = 0; c < DL; ++c) acc[r][c] = 0.f;
  }

  for (int n0 = rg.lo; n0 < rg.hi; n0 += kBc) {
    const int nvalid = min(kBc, rg.hi - n0);
    __syncthreads();  // previous tile fully consumed (and, first time, nothing to wait for)
    for (int idx = tid; idx < kBc * (D / 4); idx += kThreads) {
      const int r = idx / (D / 4);
      const int c = (idx - r * (D / 4)) * 4;
      float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
      if (r < nvalid) {
        const float* ks = kb + static_cast<int64_t>(n0 + r) * p.k_stride_s + c;
        const float* vs = vb + static_cast<int64_t>(n0 + r) * p.v_stride_s + c;
        if (aligned) {
          kv = *reinterpret_cast<const float4*>(ks);
          vv = *reinterpret_cast<const float4*>(vs);
        } else {
          kv = make_float4(ks[0], ks[1], ks[2], ks[3]);
          vv = make_float4(vs[0], vs[1], vs[2], vs[3]);
        }
      }
      *reinterpret_cast<float4*>(sK + r * kKS + c) = kv;
      *reinterpret_cast<float4*>(sV + r * D + c) = vv;
    }
    __syncthreads();

    // Scores: lane = key n0 + lane, rows row_base + r.
    float s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.f;
#pragma unroll 4
    for (int c = 0; c < D; c += 4) {
      const float4 kv = *reinterpret_cast<const float4*>(sK + lane * kKS + c);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 qv = *reinterpret_cast<const float4*>(sQw + r * D + c);
        s[r] = fmaf(qv.x, kv.x, s[r]);
        s[r] = fmaf(qv.y, kv.y, s[r]);
        s[r] = fmaf(qv.z, kv.z, s[r]);
        s[r] = fmaf(qv.w, kv.w, s[r]);
      }
    }
    const int j = n0 + lane;
    __syncwarp();  // the previous tile's reads of sPw are done
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const long long i = row_base + r;
      const bool visible = j < rg.hi && j < rg.ke && (!p.causal || static_cast<long long>(j) <= rg.qo + i);
      const float v = visible ? s[r] * scale_log2 : -INFINITY;
      const float mx = warp_max(v);
      const float m_new = fmaxf(row_max[r], mx);
      const float m_use = softmax_offset(m_new);
      const float alpha = exp2f(row_max[r] - m_use);
      row_max[r] = m_new;
      const float pr = exp2f(v - m_use);
      lsum[r] = lsum[r] * alpha + pr;
#pragma unroll
      for (int c = 0; c < DL; ++c) acc[r][c] *= alpha;
      sPw[r * kBc + lane] = pr;
    }
    __syncwarp();

    // acc[r][d] += sum_j P[r][j] V[j][d], d = lane + 32 c.
#pragma unroll 2
    for (int jj = 0; jj < kBc; jj += 4) {
      float vv[4][DL];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int c = 0; c < DL; ++c) {
          const int d = lane + 32 * c;
          vv[u][c] = (d < D) ? sV[(jj + u) * D + d] : 0.f;
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 pv = *reinterpret_cast<const float4*>(sPw + r * kBc + jj);
#pragma unroll
        for (int c = 0; c < DL; ++c) {
          acc[r][c] = fmaf(pv.x, vv[0][c], acc[r][c]);
          acc[r][c] = fmaf(pv.y, vv[1][c], acc[r][c]);
          acc[r][c] = fmaf(pv.z, vv[2][c], acc[r][c]);
          acc[r][c] = fmaf(pv.w, vv[3][c], acc[r][c]);
        }
      }
    }
  }

  float* out = static_cast<float*>(p.out);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float l = warp_sum(lsum[r]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int m = row_base + r;
    if (m < m_end) {
      const int64_t row = (sr.out_row0 + m) * p.heads_q + h;
#pragma unroll
      for (int c = 0; c < DL; ++c) {
        const int d = lane + 32 * c;
        if (d < D) out[row * D + d] = acc[r][c] * inv;
      }
    }
  }
}

template <int D>
cudaError_t launch_simt_d(const AttentionParams& p, bool aligned, cudaStream_t stream) {
  const int64_t bh = static_cast<int64_t>(p.batch) * p.heads_q;
  using C = SimtConfig<D>;
  const int64_t blocks = (p.q_len + C::kBr - 1) / C::kBr * bh;
  return launch_with_smem(prefill_simt_kernel<D>, blocks, C::kThreads, C::kSmemFloats * sizeof(float), p, aligned,
                          stream);
}

}  // namespace

cudaError_t launch_prefill_simt(const AttentionParams& p, bool aligned, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_simt_d<32>(p, aligned, stream);
    case 64: return launch_simt_d<64>(p, aligned, stream);
    case 80: return launch_simt_d<80>(p, aligned, stream);
    case 96: return launch_simt_d<96>(p, aligned, stream);
    case 128: return launch_simt_d<128>(p, aligned, stream);
    case 256: return launch_simt_d<256>(p, aligned, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attn
}  // namespace eet
