// The ticket merge of the decode kernels (design in attention_decode.cu): the splits of one (batch, kv head, query
// chunk) are plain blocks, no cluster. Each writes its partial to the workspace as on the combine path, then takes
// a ticket from a counter of its group; the block that takes the last ticket merges the group's partials from L2
// and writes the output, and sets the counter back to 0 for the next launch. Header-only, device code.
//
// Why not a cluster: on the H200 a thread block cluster costs a plain streaming read 0.8-1.5 us at the batch-1
// decode sizes (scripts/harness_read_ceiling.cu: 13 MB read in 5.1 us as 200 blocks, 5.9 us as clusters of 8), and
// the clusters a GPU holds at once cap the splits (9+ splits of 25 heads spill into a second wave). Why not the
// combine kernel: a second launch, and a wait for the whole first grid, on every step.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_decode.cuh"
#include "common.cuh"

namespace eet {
namespace attn {

// Every thread of the block calls this after its share of the block's partial went to ws_acc / ws_ml (layout of
// the combine path: split s, output row o at ws_acc[(s * rows_total + o) * D + d], max at ws_ml[s * rows_total + o],
// sum at ws_ml[(splits + s) * rows_total + o]). ticket: the group's counter, 0 before the group's first block takes
// one and set back to 0 by the last. The merge reads splits in order 0..splits-1 whichever block merges, so the
// output is bit-identical run to run; a row no split saw a key for is written as 0.
template <typename T, int D, typename OutRow>
__device__ __forceinline__ void ticket_merge_write(const float* ws_acc, const float* ws_ml, unsigned* ticket, int nq,
                                                   int splits, int64_t rows_total, T* __restrict__ out,
                                                   OutRow out_row) {
  __shared__ int last;
  // The block's partial stores happen before thread 0's ticket (the barrier), and its acq_rel atomic at GPU scope
  // releases them with it (release is cumulative over what the barrier ordered before it) and, in the last block,
  // acquires every earlier block's: one atomic round trip instead of a fence per thread on each side.
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned prev;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;\n" : "=r"(prev) : "l"(ticket) : "memory");
    last = prev == static_cast<unsigned>(splits - 1);
    if (last) *ticket = 0u;  // every other block of the group has taken its ticket: ready for the next launch
  }
  __syncthreads();
  if (!last) return;  // block-uniform; the partials are then read from L2 (ld.global.cg) below
  for (int i = static_cast<int>(threadIdx.x); i < nq * D; i += kThreads) {
    const int k = i / D;
    const int d = i - k * D;
    const int64_t o = out_row(k);
    float mmax = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) mmax = fmaxf(mmax, __ldcg(ws_ml + s * rows_total + o));
    float lsum = 0.f, acc = 0.f;
    if (mmax != -INFINITY) {
#pragma unroll 8
      for (int s = 0; s < splits; ++s) {
        const float w = partial_weight(__ldcg(ws_ml + s * rows_total + o), mmax);
        lsum += __ldcg(ws_ml + (splits + s) * rows_total + o) * w;
        acc += __ldcg(ws_acc + (s * rows_total + o) * D + d) * w;
      }
    }
    out[o * D + d] = from_float<T>(lsum > 0.f ? acc / lsum : 0.f);
  }
}

}  // namespace attn
}  // namespace eet
