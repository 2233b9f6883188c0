// The end of a decode block (design in attention_decode.cu), shared by the CUDA-core kernel
// (attention_decode_split.cu) and the tensor-core one (attention_decode_mma.cu): merge the partials its warps left
// in shared memory, then write the output (one split), merge the cluster's splits (attention_decode_merge.cuh), or
// store the block's partial for the combine kernel. Header-only, device code.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_decode.cuh"
#include "attention_decode_merge.cuh"
#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace attn {

// Shared memory holding the warps' partials: warp w's unnormalized accumulator of query vector k at
// acc[w * warp_stride + k * D + d], its running max (log2 domain, -inf: no visible key) and sum at
// m[w * kQPerBlock + k] and l[w * kQPerBlock + k]; block_m / block_l: kQPerBlock floats each for the block's own
// partial (the cluster merge reads them from the peers).
struct DecodePartials {
  float* acc;
  int warp_stride;
  float* m;
  float* l;
  float* block_m;
  float* block_l;
};

// Every thread of the block calls this once its warp wrote its partials (it starts with __syncthreads and, on the
// cluster path, holds the cluster barriers). Block (qc, hk, b) of split `split` of `splits`; nq query vectors.
// ws_acc / ws_ml: the combine path's workspace, nullptr otherwise.
template <typename T, int D>
__device__ __forceinline__ void decode_block_finish(const AttentionParams& p, const DecodePartials& s, int b, int hk,
                                                    int qc, int nq, int split, int splits, float* __restrict__ ws_acc,
                                                    float* __restrict__ ws_ml) {
  __syncthreads();
  const int group_size = p.heads_q / p.heads_kv;
  // Output row of query vector k: out is [batch, q_len, heads_q, D].
  auto out_row = [&](int k) -> int64_t {
    const int qi = qc * kQPerBlock + k;
    const int hig = qi / p.q_len;
    const int row = qi - hig * p.q_len;
    return (static_cast<int64_t>(b) * p.q_len + row) * p.heads_q + hk * group_size + hig;
  };
  const bool in_cluster = splits > 1 && ws_acc == nullptr;  // grid-uniform
  const int64_t rows_total = static_cast<int64_t>(p.batch) * p.q_len * p.heads_q;
  for (int i = static_cast<int>(threadIdx.x); i < nq * D; i += kThreads) {
    const int k = i / D;
    const int d = i - k * D;
    float mmax = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mmax = fmaxf(mmax, s.m[w * kQPerBlock + k]);
    float lsum = 0.f, a = 0.f;
    if (mmax != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = partial_weight(s.m[w * kQPerBlock + k], mmax);
        lsum += s.l[w * kQPerBlock + k] * f;
        a += s.acc[w * s.warp_stride + i] * f;
      }
    }
    if (splits == 1) {
      static_cast<T*>(p.out)[out_row(k) * D + d] = from_float<T>(lsum > 0.f ? a / lsum : 0.f);
    } else if (in_cluster) {
      s.acc[i] = a;  // in place (warp 0's slot): this thread alone reads or writes element (k, d)
      if (d == 0) s.block_m[k] = mmax, s.block_l[k] = lsum;
    } else {
      const int64_t w = split * rows_total + out_row(k);
      ws_acc[w * D + d] = a;
      if (d == 0) {
        ws_ml[w] = mmax;
        ws_ml[splits * rows_total + w] = lsum;
      }
    }
  }
  if (in_cluster) cluster_merge_write<T, D>(s.acc, s.block_m, s.block_l, nq, splits, static_cast<T*>(p.out), out_row);
}

}  // namespace attn
}  // namespace eet
