// What the two tensor-core decode kernels (attention_decode_mma.cu: shared-memory pipeline,
// attention_decode_mma_regs.cu: register loads) share besides the merge: the block's start (its index, K / V base,
// the PDL wait with the L2 prefetch before it), one warp step of the online softmax and the layout of the transposed
// output accumulator. Both kernels hold row g of S's 16-row tile in the 4 lanes of quad g (rows 8..15 are padding),
// keys nt * 8 + 2tig, + 1 of n-tile nt in C elements 0, 1. The query-row and key-limit arithmetic between those stays
// written out in each kernel: moved here, it changed both kernels' SASS (checked with cuobjdump, 2026-12-04).
// Header-only, device code.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_common.cuh"
#include "attention_decode.cuh"
#include "attention_ptx.cuh"
#include "common.cuh"

namespace eet {
namespace attn {

// The block's grid index and this (batch, kv head)'s K and V. Lets dependents be scheduled (pdl_trigger, as
// decode_kernel), asks L2 for the first rows_ahead keys of the chunk as an unpadded cache would place them, then waits
// for the previous grid (pdl_wait): nothing before it reads a value.
template <typename T>
struct MmaDecodeBlock {
  DecodeBlockIndex bi;
  const T* kb;
  const T* vb;
};
template <typename T, int D, int kKeys>
__device__ __forceinline__ MmaDecodeBlock<T> mma_decode_block_start(const AttentionParams& p, int q_chunks, int splits,
                                                                    int rows_ahead) {
  MmaDecodeBlock<T> m;
  m.bi = decode_block_index(p, q_chunks);
  m.kb = static_cast<const T*>(p.k) + m.bi.b * p.k_stride_b + m.bi.hk * p.k_stride_h;
  m.vb = static_cast<const T*>(p.v) + m.bi.b * p.v_stride_b + m.bi.hk * p.v_stride_h;
  pdl_trigger();
  prefetch_chunk_start<T, D, kKeys>(p, m.kb, m.vb, m.bi.split, splits, rows_ahead);
  pdl_wait();
  return m;
}

// O is accumulated transposed, O^T += V^T P^T (the same layout in both kernels): V^T is the A operand (16 d rows x 16
// keys per m-tile) and P^T the B operand (16 keys x 8 query columns). S = Q K^T's accumulator leaves row g's
// probabilities of keys 2tig, 2tig + 1 (n-tile 0) and 2tig + 8, 2tig + 9 (n-tile 1) in lane (g, tig): exactly P^T's B
// fragment for column g, so P goes to the mma as it is, two registers per 16 keys. Against O = P V with P as the A
// operand this halves the P V mma (one m-tile covers 16 d where an n-tile covered 8), halves O's accumulator registers
// (the query columns 4..7 of O^T are idle where rows 4..15 of O were) and drops the zero padding words of P's A
// fragment. O^T's element c of m-tile mt: query column 2tig + (c & 1), d row g + 8 * (c >> 1) of the kernel's d map.
//
// sa: the step's S over A partial accumulators (summed here), NT n-tiles of 8 keys; base: the step's first key;
// vis_end: row g sees keys < vis_end; m_row / l_part: row g's running max (log2 domain, the same in the quad) and
// this lane's share of its sum. Returns row g's rescale factor for what O holds so far (rescale_ot applies it); on
// return bh[kh] / bl[kh] hold P^T's B fragment of k-step kh (n-tiles 2kh, 2kh + 1) as a 16-bit high part and the
// 16-bit rest, two mma each, so that P keeps ~fp32 precision as in the CUDA-core kernel. One rounding of P to fp16
// (what flash does) was measured on the H200 to flip greedy tokens of small fp16 Llama / Mistral models more often
// than HF's eager path does (29 of 32 prompts agreeing with sdpa against eager's 31, test_generic_greedy_agreement);
// the extra mma cost little where latency, not the tensor cores, bounds the kernel.
template <typename T, int A, int NT>
__device__ __forceinline__ float mma_decode_softmax_step(const float (&sa)[A][NT][4], int base, int tig, int vis_end,
                                                         float scale_log2, float& m_row, float& l_part,
                                                         uint32_t (&bh)[NT / 2][2], uint32_t (&bl)[NT / 2][2]) {
  // Row g: scale to log2 units, mask, online softmax over the quad's 4 lanes (2 keys per lane per n-tile).
  float s[NT][2];
  float mx = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = sa[0][nt][e];
#pragma unroll
      for (int a = 1; a < A; ++a) v += sa[a][nt][e];
      s[nt][e] = base + nt * 8 + 2 * tig + e < vis_end ? v * scale_log2 : -INFINITY;
      mx = fmaxf(mx, s[nt][e]);
    }
  }
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  const float m_new = fmaxf(m_row, mx);
  const float m_use = softmax_offset(m_new);  // nothing visible yet: exp2(-inf - 0) = 0
  const float alpha = fast_exp2(m_row - m_use);
  m_row = m_new;
  float rs = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[nt][e] = fast_exp2(s[nt][e] - m_use);
      rs += s[nt][e];
    }
  }
  l_part = l_part * alpha + rs;
#pragma unroll
  for (int kh = 0; kh < NT / 2; ++kh) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float p0 = s[2 * kh + h][0], p1 = s[2 * kh + h][1];
      bh[kh][h] = pack2<T>(p0, p1);
      const float2 back = unpack2<T>(bh[kh][h]);
      bl[kh][h] = pack2<T>(p0 - back.x, p1 - back.y);
    }
  }
  return alpha;
}

// O^T *= the rescale factors of its query columns 2tig, 2tig + 1: query q's factor was computed in quad q (lane 4q).
// Columns past the block's query vectors get their (all-masked) rows' factor, 0 times an accumulator of zeros.
template <int MT>
__device__ __forceinline__ void rescale_ot(float (&o)[MT][4], float alpha, int tig) {
  const float a0 = __shfl_sync(0xffffffffu, alpha, 8 * tig);
  const float a1 = __shfl_sync(0xffffffffu, alpha, 8 * tig + 4);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    o[mt][0] *= a0;
    o[mt][1] *= a1;
    o[mt][2] *= a0;
    o[mt][3] *= a1;
  }
}

}  // namespace attn
}  // namespace eet
