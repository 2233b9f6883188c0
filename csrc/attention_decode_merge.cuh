// The cluster merge of the decode kernel (design in attention_decode.cu): the splits of one (batch, kv head,
// query chunk) are the blocks of one thread block cluster; each leaves its partial in its own shared memory and
// the cluster combines them over distributed shared memory. Header-only, device code; sm_90.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_decode.cuh"
#include "common.cuh"

namespace eet {
namespace attn {

// Merge the `splits` partials of a cluster (1, splits, 1) and write the normalized output. Every thread of every
// block of the cluster must call this (it holds two cluster barriers). Partial of rank r, in r's shared memory:
//   part_m[k], part_l[k]  running max (log2 domain; -inf: no visible key) and sum of query vector k < nq,
//   part_acc[k * D + d]   unnormalized accumulator,
// written by the block before the call (the first barrier orders those writes before the peers' reads).
// out_row(k) is the output row of query vector k. Output element i = k * D + d goes to rank (i / kThreads) %
// splits, which reads all ranks in order 0..splits-1: the same sums whichever rank does it, so the output is
// bit-identical run to run. A vector no split saw a key for is written as 0, never 0/0.
template <typename T, int D, typename OutRow>
__device__ __forceinline__ void cluster_merge_write(const float* part_acc, const float* part_m, const float* part_l,
                                                    int nq, int splits, T* __restrict__ out, OutRow out_row) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  cluster.sync();  // every partial is written (release / acquire at cluster scope)

  const int elems = nq * D;
  for (int i = rank * kThreads + static_cast<int>(threadIdx.x); i < elems; i += splits * kThreads) {
    const int k = i / D;
    const int d = i - k * D;
    // All loads first (independent of each other): one distributed-shared-memory round trip.
    float m[kMaxClusterSplits], l[kMaxClusterSplits], a[kMaxClusterSplits];
#pragma unroll
    for (int r = 0; r < kMaxClusterSplits; ++r) {
      m[r] = -INFINITY, l[r] = 0.f, a[r] = 0.f;
      if (r < splits) {
        m[r] = *cluster.map_shared_rank(part_m + k, r);
        l[r] = *cluster.map_shared_rank(part_l + k, r);
        a[r] = *cluster.map_shared_rank(part_acc + i, r);
      }
    }
    float mmax = -INFINITY;
#pragma unroll
    for (int r = 0; r < kMaxClusterSplits; ++r) mmax = fmaxf(mmax, m[r]);
    float lsum = 0.f, acc = 0.f;
    if (mmax != -INFINITY) {
#pragma unroll
      for (int r = 0; r < kMaxClusterSplits; ++r) {
        const float w = partial_weight(m[r], mmax);  // 0 for ranks past `splits` (m = -inf) and empty splits
        lsum += l[r] * w;
        acc += a[r] * w;
      }
    }
    out[out_row(k) * D + d] = from_float<T>(lsum > 0.f ? acc / lsum : 0.f);
  }
  cluster.sync();  // no block leaves (freeing its shared memory) while a peer may still read it
}

}  // namespace attn
}  // namespace eet
