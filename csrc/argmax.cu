// Row-wise argmax (eet::argmax_rows in kernels.h): torch.argmax(x, dim=-1) — the index of each row's largest value,
// the first one among equal maxima, a NaN counting as larger than every number (the first NaN wins).
//
// Why a kernel of its own: greedy decoding takes one argmax per step over the vocabulary, and torch's reduction runs
// a 128K-wide fp16 row on a handful of blocks in ~26 µs on an H100 (evaluation/results/decode-profile-h100.md) — as
// long as two whole decoder layers' attention. Here one block of 1024 threads reads a row with 16-byte loads, four
// in flight per thread, from L2 (the LM head has just written the logits), and reduces (value, index) pairs by warp
// shuffles: a few µs.
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kThreads = 1024;
constexpr int kInFlight = 4;  // vector loads per thread issued before the first comparison of a round

// Does (a, ia) beat (b, ib) under torch.argmax's order?
__device__ __forceinline__ bool beats(float a, int64_t ia, float b, int64_t ib) {
  const bool nan_a = isnan(a), nan_b = isnan(b);
  if (nan_a || nan_b) return nan_a && (!nan_b || ia < ib);
  return a > b || (a == b && ia < ib);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) argmax_rows_kernel(const T* __restrict__ x, int64_t* __restrict__ out,
                                                                int64_t cols, int64_t ld) {
  __shared__ float best_s[kThreads / 32];
  __shared__ int64_t index_s[kThreads / 32];
  pdl_trigger();
  pdl_wait();  // x comes from the previous kernel
  const T* row = x + static_cast<int64_t>(blockIdx.x) * ld;
  float best = -INFINITY;
  int64_t index = INT64_MAX;  // no element yet: any element, -inf included, beats it
  const int64_t stride = static_cast<int64_t>(kThreads) * VEC;
  for (int64_t base = static_cast<int64_t>(threadIdx.x) * VEC; base < cols; base += kInFlight * stride) {
    Pack<T, VEC> raw[kInFlight];  // kept in the storage type until compared: 4 registers per 16-byte load
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const int64_t c = base + i * stride;
      if (c < cols) raw[i] = load_pack<VEC>(row + c);
    }
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const int64_t c = base + i * stride;
      if (c >= cols) break;
      float v[VEC];
      unpack_float<VEC>(raw[i], v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (beats(v[j], c + j, best, index)) best = v[j], index = c + j;
      }
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t other_index = __shfl_xor_sync(0xffffffffu, index, offset);
    if (beats(other, other_index, best, index)) best = other, index = other_index;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) best_s[warp] = best, index_s[warp] = index;
  __syncthreads();
  if (warp == 0) {
    best = best_s[lane];
    index = index_s[lane];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t other_index = __shfl_xor_sync(0xffffffffu, index, offset);
      if (beats(other, other_index, best, index)) best = other, index = other_index;
    }
    if (lane == 0) out[blockIdx.x] = index;
  }
}

}  // namespace

cudaError_t argmax_rows(DType dtype, const void* x, int64_t* out, int64_t rows, int64_t cols, int64_t ld,
                        cudaStream_t stream) {
  if (rows < 0 || cols <= 0 || ld < cols || rows > INT32_MAX || x == nullptr || out == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kVec = kVec16<T>;
    const dim3 grid(static_cast<unsigned>(rows)), block(kThreads);
    if (cols % kVec == 0 && ld % kVec == 0 && is_aligned(x, 16)) {
      return launch_pdl(argmax_rows_kernel<T, kVec>, grid, block, 0, stream, 1, static_cast<const T*>(x), out, cols,
                        ld);
    }
    return launch_pdl(argmax_rows_kernel<T, 1>, grid, block, 0, stream, 1, static_cast<const T*>(x), out, cols, ld);
  });
}

}  // namespace eet
