// What the two tensor-core decode kernels (attention_decode_mma.cu: shared-memory pipeline,
// attention_decode_mma_regs.cu: register loads) share besides the merge: the block's start (its index, K / V base,
// the PDL wait with the L2 prefetch before it) and one warp step of the online softmax. Both kernels hold row g of
// the 16-row tile in the 4 lanes of quad g (rows 8..15 are padding), keys nt * 8 + 2tig, + 1 of n-tile nt in C
// elements 0, 1. The query-row and key-limit arithmetic between those stays written out in each kernel: moved here,
// it changed both kernels' SASS, and the SASS kept is the one timed and sanitized on the H200 (logs/2026-12-04b).
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
                                                                    bool prefetch, int rows_ahead) {
  MmaDecodeBlock<T> m;
  m.bi = decode_block_index(p, q_chunks);
  m.kb = static_cast<const T*>(p.k) + m.bi.b * p.k_stride_b + m.bi.hk * p.k_stride_h;
  m.vb = static_cast<const T*>(p.v) + m.bi.b * p.v_stride_b + m.bi.hk * p.v_stride_h;
  pdl_trigger();
  if (prefetch) prefetch_chunk_start<T, D, kKeys>(p, m.kb, m.vb, m.bi.split, splits, rows_ahead);
  pdl_wait();
  return m;
}

// sa: the step's S over A partial accumulators (summed here), NT n-tiles of 8 keys; base: the step's first key;
// vis_end: row g sees keys < vis_end; m_row / l_part: row g's running max (log2 domain, the same in the quad) and
// this lane's share of its sum; o: the accumulator's DT n-tiles (elements 0, 1: row g). On return ph[kh] / pl[kh]
// hold the probabilities of n-tiles 2kh, 2kh + 1 as the A fragment of P V's k-step kh: a 16-bit high part and the
// 16-bit rest, two mma each, so that P keeps ~fp32 precision as in the CUDA-core kernel. One rounding of P to fp16
// (what flash does) was measured on the H200 to flip greedy tokens of small fp16 Llama / Mistral models more often
// than HF's eager path does (29 of 32 prompts agreeing with sdpa against eager's 31, test_generic_greedy_agreement);
// the extra mma cost little where latency, not the tensor cores, bounds the kernel.
template <typename T, int A, int NT, int DT>
__device__ __forceinline__ void mma_decode_softmax_step(const float (&sa)[A][NT][4], int base, int tig, int vis_end,
                                                        float scale_log2, float& m_row, float& l_part,
                                                        float (&o)[DT][4], uint32_t (&ph)[NT / 2][4],
                                                        uint32_t (&pl)[NT / 2][4]) {
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
  for (int dt = 0; dt < DT; ++dt) {
    o[dt][0] *= alpha;
    o[dt][1] *= alpha;
  }
#pragma unroll
  for (int kh = 0; kh < NT / 2; ++kh) {
    const uint32_t hi0 = pack2<T>(s[2 * kh][0], s[2 * kh][1]), hi1 = pack2<T>(s[2 * kh + 1][0], s[2 * kh + 1][1]);
    const float2 back0 = unpack2<T>(hi0), back1 = unpack2<T>(hi1);
    ph[kh][0] = hi0, ph[kh][1] = 0u, ph[kh][2] = hi1, ph[kh][3] = 0u;
    pl[kh][0] = pack2<T>(s[2 * kh][0] - back0.x, s[2 * kh][1] - back0.y), pl[kh][1] = 0u;
    pl[kh][2] = pack2<T>(s[2 * kh + 1][0] - back1.x, s[2 * kh + 1][1] - back1.y), pl[kh][3] = 0u;
  }
}

}  // namespace attn
}  // namespace eet
