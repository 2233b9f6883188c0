// Attention-mask bookkeeping in one kernel each (eet::padding_runs and eet::in_place_packing in kernels.h).
//
// Why kernels of their own: torch computes a mask's per-row runs of real keys in ~13 small reductions and where-ops,
// the "is it right padding" check in ~5 more, and the in-place packing plan (segment bounds, real-token map) in ~16;
// each is a launch of its own, so a graphed bert-base 1 x 128 forward spent about a third of its ~148 kernels on this
// bookkeeping before the first layer (docs/encoder.md), and a graph's host launch time grows with its node count.
// The masks are small ([batch, seq] of int64 at most), so one block reads all of one.
#include <cstdint>

#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kRunsThreads = 1024;
constexpr int kRunsWarps = kRunsThreads / 32;
constexpr int kRunsUnroll = 4;  // mask loads per lane issued before the first comparison
constexpr int kPlanThreads = 256;

// One warp per row (rows strided over the block's warps); the block's flags combine every row's.
template <typename M>
__global__ void __launch_bounds__(kRunsThreads) padding_runs_kernel(const M* __restrict__ mask, int64_t rows,
                                                                    int cols, int64_t ld, int32_t* __restrict__ start,
                                                                    int32_t* __restrict__ end,
                                                                    int32_t* __restrict__ flags) {
  pdl_trigger();
  pdl_wait();  // the mask may come from the previous kernel (a graph's static input copy)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int contiguous = 1, full = 1, right = 1;
  for (int64_t r = warp; r < rows; r += kRunsWarps) {
    const M* row = mask + r * ld;
    int first = cols, last = 0, count = 0;
    for (int c = lane; c < cols; c += 32 * kRunsUnroll) {
      M v[kRunsUnroll];
#pragma unroll
      for (int i = 0; i < kRunsUnroll; ++i) v[i] = c + 32 * i < cols ? row[c + 32 * i] : M(0);
#pragma unroll
      for (int i = 0; i < kRunsUnroll; ++i) {
        if (v[i] != M(0)) {
          first = min(first, c + 32 * i);
          last = max(last, c + 32 * i + 1);
          ++count;
        }
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      first = min(first, __shfl_xor_sync(0xffffffffu, first, offset));
      last = max(last, __shfl_xor_sync(0xffffffffu, last, offset));
      count += __shfl_xor_sync(0xffffffffu, count, offset);
    }
    const int s = count ? first : 0, e = count ? last : 0;  // an all-padding row is the empty run [0, 0)
    if (lane == 0) start[r] = s, end[r] = e;
    const bool one_run = count == e - s;
    contiguous &= one_run;
    full &= count == cols;
    right &= one_run && s == 0;
  }
  contiguous = __syncthreads_and(contiguous);
  full = __syncthreads_and(full);
  right = __syncthreads_and(right);
  if (threadIdx.x == 0) flags[0] = contiguous, flags[1] = full, flags[2] = right;
}

// Thread i writes real[i] (i < batch * seq) and cu_seqlens[i] (i <= 3 * batch).
__global__ void __launch_bounds__(kPlanThreads) in_place_packing_kernel(const int32_t* __restrict__ start,
                                                                         const int32_t* __restrict__ end,
                                                                         int64_t batch, int seq,
                                                                         int32_t* __restrict__ cu_seqlens,
                                                                         bool* __restrict__ real) {
  pdl_trigger();
  pdl_wait();  // start / end come from the previous kernel
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kPlanThreads + threadIdx.x;
  auto run = [&](int64_t b, int& s, int& e) {  // the run clamped into the row: 0 <= s <= e <= seq
    s = min(max(start[b], 0), seq);
    e = max(min(max(end[b], 0), seq), s);
  };
  int s, e;
  if (i < batch * seq) {
    const int64_t b = i / seq;
    const int pos = static_cast<int>(i - b * seq);
    run(b, s, e);
    real[i] = pos >= s && pos < e;
  }
  if (i < 3 * batch) {
    const int64_t b = i / 3;
    const int part = static_cast<int>(i - 3 * b);
    run(b, s, e);
    cu_seqlens[i] = static_cast<int32_t>(b * seq) + (part == 0 ? 0 : part == 1 ? s : e);
  } else if (i == 3 * batch) {
    cu_seqlens[i] = static_cast<int32_t>(batch * seq);
  }
}

}  // namespace

cudaError_t padding_runs(const void* mask, int mask_bytes, int64_t rows, int64_t cols, int64_t ld, int32_t* start,
                         int32_t* end, int32_t* flags, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || cols > INT32_MAX || ld < cols || flags == nullptr ||
      (rows > 0 && cols > 0 && mask == nullptr)) {  // an empty mask may have no storage at all
    return cudaErrorInvalidValue;
  }
  const dim3 grid(1), block(kRunsThreads);
  const int n = static_cast<int>(cols);
  switch (mask_bytes) {
    case 1:
      return launch_pdl(padding_runs_kernel<uint8_t>, grid, block, 0, stream, 1, static_cast<const uint8_t*>(mask),
                        rows, n, ld, start, end, flags);
    case 4:
      return launch_pdl(padding_runs_kernel<int32_t>, grid, block, 0, stream, 1, static_cast<const int32_t*>(mask),
                        rows, n, ld, start, end, flags);
    case 8:
      return launch_pdl(padding_runs_kernel<int64_t>, grid, block, 0, stream, 1, static_cast<const int64_t*>(mask),
                        rows, n, ld, start, end, flags);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t in_place_packing(const int32_t* start, const int32_t* end, int64_t batch, int64_t seq,
                             int32_t* cu_seqlens, bool* real, cudaStream_t stream) {
  if (batch < 0 || seq < 0 || batch * seq > INT32_MAX || cu_seqlens == nullptr) return cudaErrorInvalidValue;
  const int64_t threads = batch * seq > 3 * batch + 1 ? batch * seq : 3 * batch + 1;
  const dim3 grid(static_cast<unsigned>((threads + kPlanThreads - 1) / kPlanThreads)), block(kPlanThreads);
  return launch_pdl(in_place_packing_kernel, grid, block, 0, stream, 1, start, end, batch, static_cast<int>(seq),
                    cu_seqlens, real);
}

}  // namespace eet
