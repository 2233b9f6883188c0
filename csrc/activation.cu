// out = gelu(x + bias) (eet::bias_gelu in kernels.h): the bias add and activation after a GEMM without
// bias, fused into one pass over the activations. x + bias is kept in fp32 (not rounded to the storage
// dtype) as in eet_hf/ops/reference.py.
//
// Grid: blockIdx.x picks a chunk of the columns, blockIdx.y a group of rows. A thread owns one column
// vector, loads its bias once and applies it to kRowsPerThread rows (one by default), all loads issued before
// any store; grid y is capped at 65535, beyond which blocks stride over further row groups.
// 16-byte vectors when cols is a multiple of the vector width and the pointers are aligned; scalar
// otherwise. x and out are not __restrict__: out may alias x (each element is read and then written by
// the same thread, so aliasing is safe without it).
#include <algorithm>
#include <climits>

#include "common.cuh"
#include "gelu_erf_fast.cuh"
#include "gelu_staged.cuh"
#include "kernels.h"

namespace eet {
namespace {

// One row per thread: on the H200 (fp16, 2026-12-03; docs/kernels.md) it streams the exact form at 78-85% of the
// 4.16 TB/s copy ceiling and the tanh form at 86-93%, where 4 rows per thread reached 59-69% and 77-88%, and 2 or 8
// rows less still: a thread holding fewer rows keeps fewer registers, so more warps per SM overlap one warp's math
// with the others' loads.
constexpr int kMaxThreads = 256;
constexpr int kRowsPerThread = 1;
constexpr int64_t kMaxGridY = 65535;  // hardware limit of gridDim.y; the kernel strides over more rows

// gelu with the tanh approximation, written as h * sigmoid(2u): the same function as
// 0.5 * h * (1 + tanh(u)), since 1 + tanh(u) = 2 / (1 + exp(-2u)), but without the cancellation of
// 1 + tanh(u) for negative h. exp overflowing to inf for very negative h gives h / inf = -0, the limit.
// kFast (16-bit storage types) uses the hardware exp2 / reciprocal, relative error ~1e-6, far below
// the 2^-9 / 2^-12 rounding of bf16 / fp16; on H200 that lifts fp16 from ~2.7 to 3.5-4.0 TB/s, where the
// accurate expf and division made the kernel compute-bound. fp32 keeps the accurate functions (it is
// memory-bound with them anyway).
template <bool kFast>
__device__ __forceinline__ float gelu_tanh(float h) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kCoeff = 0.044715f;
  const float u = kSqrt2OverPi * fmaf(kCoeff * h, h * h, h);
  if constexpr (kFast) {
    return __fdividef(h, 1.0f + __expf(-2.0f * u));  // __fdividef(h, inf or > 2^126) = 0: same limit
  } else {
    return h / (1.0f + expf(-2.0f * u));
  }
}

// Exact gelu. fp32 tensors: the same formula torch uses. 16-bit tensors: gelu_erf_fast (gelu_erf_fast.cuh), fewer
// instructions than erff's two branches and no cancellation in the negative tail.
template <bool kFast>
__device__ __forceinline__ float gelu_erf(float h) {
  if constexpr (kFast) {
    return gelu_erf_fast(h);
  } else {
    constexpr float kSqrtHalf = 0.7071067811865476f;
    return 0.5f * h * (1.0f + erff(h * kSqrtHalf));
  }
}

// gelu_tanh_staged (HF's gelu_new with torch's roundings) lives in gelu_staged.cuh, shared with small_linear.cu.

// Which gelu bias_gelu_kernel computes.
enum GeluForm : int { kFormErf = 0, kFormTanh = 1, kFormTanhStaged = 2 };

// The form is a template argument: a runtime select inside the element loop would leave the compiler free to
// evaluate every form for every element.
template <typename T, int VEC, int kForm>
__global__ void __launch_bounds__(kMaxThreads)
bias_gelu_kernel(const T* x,                    // [rows, cols]; may alias out
                 const T* __restrict__ bias,    // [cols] or nullptr
                 T* out,                        // [rows, cols]
                 int64_t rows, int64_t cols) {
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (col >= cols) return;  // no barriers below, so idle threads may leave
  float b[VEC];
  if (bias != nullptr) {
    load_float<VEC>(bias + col, b);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) b[j] = 0.0f;
  }
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * kRowsPerThread;
  for (int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRowsPerThread; row0 < rows; row0 += row_step) {
    float v[kRowsPerThread][VEC];
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      if (row0 + k < rows) load_float<VEC>(x + (row0 + k) * cols + col, v[k]);
    }
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      if (row0 + k < rows) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float h = v[k][j] + b[j];
          if constexpr (kForm == kFormTanh) {
            v[k][j] = gelu_tanh<sizeof(T) == 2>(h);
          } else if constexpr (kForm == kFormTanhStaged) {
            v[k][j] = gelu_tanh_staged<T>(h);
          } else {
            v[k][j] = gelu_erf<sizeof(T) == 2>(h);
          }
        }
        store_float<VEC>(out + (row0 + k) * cols + col, v[k]);
      }
    }
  }
}

template <typename T, int VEC>
cudaError_t launch_bias_gelu(const void* x, const void* bias, void* out, int64_t rows, int64_t cols, int form,
                             cudaStream_t stream) {
  const int64_t num_vecs = cols / VEC;
  // Split the row's vectors into equal chunks of at most kMaxThreads, so the last chunk's block is not
  // mostly idle (e.g. 384 vectors -> 2 x 192 threads rather than 256 + 128).
  const int64_t chunks = ceil_div(num_vecs, kMaxThreads);
  const int64_t threads = round_up(ceil_div(num_vecs, chunks), 32);
  if (chunks > INT_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(chunks),
                  static_cast<unsigned>(std::min(ceil_div(rows, kRowsPerThread), kMaxGridY)));
  auto launch = [&](auto kernel) {
    kernel<<<grid, static_cast<unsigned>(threads), 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(bias),
                                                                 static_cast<T*>(out), rows, cols);
    return cudaGetLastError();
  };
  switch (form) {
    case kFormErf: return launch(bias_gelu_kernel<T, VEC, kFormErf>);
    case kFormTanh: return launch(bias_gelu_kernel<T, VEC, kFormTanh>);
    case kFormTanhStaged: return launch(bias_gelu_kernel<T, VEC, kFormTanhStaged>);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t bias_gelu(DType dtype,
                      const void* x,     // [rows, cols]
                      const void* bias,  // [cols] or nullptr
                      void* out,         // [rows, cols]
                      int64_t rows, int64_t cols, GeluKind kind, cudaStream_t stream) {
  if (rows < 0 || cols < 0) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (x == nullptr || out == nullptr) return cudaErrorInvalidValue;
  int form = kFormErf;
  switch (kind) {
    case GeluKind::kTanh: form = kFormTanh; break;
    case GeluKind::kErf: form = kFormErf; break;
    case GeluKind::kTanhStaged: form = kFormTanhStaged; break;
    default: return cudaErrorInvalidValue;
  }
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kVec = kVec16<T>;
    const bool vectorize =
        cols % kVec == 0 && is_aligned(x, 16) && is_aligned(bias, 16) && is_aligned(out, 16);
    return vectorize ? launch_bias_gelu<T, kVec>(x, bias, out, rows, cols, form, stream)
                     : launch_bias_gelu<T, 1>(x, bias, out, rows, cols, form, stream);
  });
}

}  // namespace eet
