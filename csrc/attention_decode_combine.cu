// Combine step of split-K decode on its long-context path (design in attention_decode.cu: shapes that want more
// splits than one cluster holds): merges the splits' partials (running max, sum and unnormalized accumulator,
// log2 domain) of each output row into the normalized output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_decode.cuh"
#include "attention_kernels.h"
#include "common.cuh"

namespace eet {
namespace attn {
namespace {

// Merge the splits' partials of each output row: one warp per row. Launched as a programmatic dependent
// of decode_kernel (launch_pdl): it may start early and waits here for the partials.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml, T* __restrict__ out,
                   int64_t rows_total, int head_dim, int splits) {
  pdl_wait();     // decode_kernel's partials are complete and visible (at once without a dependency)
  pdl_trigger();  // the next kernel may get scheduled; it waits for this grid in its own pdl_wait
  __shared__ float weights[kWarps][kMaxSplits];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (o >= rows_total) return;  // warp-uniform; no block barrier below
  const float* ms = ws_ml;
  const float* ls = ws_ml + splits * rows_total;
  float mmax = -INFINITY;
  for (int s = lane; s < splits; s += 32) mmax = fmaxf(mmax, ms[s * rows_total + o]);
  mmax = warp_max(mmax);
  T* dst = out + o * head_dim;
  if (mmax == -INFINITY) {  // no split saw a visible key
    for (int d = lane; d < head_dim; d += 32) dst[d] = from_float<T>(0.f);
    return;
  }
  // Weight of split s: 2^(m_s - max), 0 for a split without a visible key.
  float lsum = 0.f;
  for (int s = lane; s < splits; s += 32) {
    const float w = partial_weight(ms[s * rows_total + o], mmax);
    weights[warp][s] = w;
    lsum += ls[s * rows_total + o] * w;
  }
  lsum = warp_sum(lsum);
  __syncwarp();
  const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
  for (int d = lane; d < head_dim; d += 32) {
    float a = 0.f;
#pragma unroll 4
    for (int s = 0; s < splits; ++s) a += ws_acc[(s * rows_total + o) * head_dim + d] * weights[warp][s];
    dst[d] = from_float<T>(a * inv);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_decode_combine(const float* ws_acc, const float* ws_ml, T* out, int64_t rows_total, int head_dim,
                                  int splits, cudaStream_t stream) {
  const int64_t cblocks = (rows_total + kWarps - 1) / kWarps;
  if (cblocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  // Programmatic dependent launch: the combine grid is launched while decode_kernel runs and waits in
  // pdl_wait for its completion, which hides the launch gap (plain launch if refused).
  return launch_pdl(combine_kernel<T>, dim3(static_cast<unsigned>(cblocks)), dim3(kThreads), 0, stream, 1u, ws_acc,
                    ws_ml, out, rows_total, head_dim, splits);
}

template cudaError_t launch_decode_combine<float>(const float* ws_acc, const float* ws_ml, float* out,
                                                  int64_t rows_total, int head_dim, int splits, cudaStream_t stream);
template cudaError_t launch_decode_combine<__half>(const float* ws_acc, const float* ws_ml, __half* out,
                                                   int64_t rows_total, int head_dim, int splits, cudaStream_t stream);
template cudaError_t launch_decode_combine<__nv_bfloat16>(const float* ws_acc, const float* ws_ml, __nv_bfloat16* out,
                                                          int64_t rows_total, int head_dim, int splits,
                                                          cudaStream_t stream);

}  // namespace attn
}  // namespace eet
