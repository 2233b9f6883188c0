// RMSNorm over the last dim (eet::rms_norm in kernels.h), for Llama / Mistral / Qwen2 style norms. One block per
// row; the block folds the row so that every thread handles several elements (any hidden size works).
//
// Numerics follow eet_hf/ops/reference.py, which follows HF's LlamaRMSNorm order exactly:
//   n = round_T(x * rsqrt(mean(x^2) + eps))   (fp32 statistics and product, one rounding to the storage type)
//   out = round_T(n * weight)                 (HF multiplies in the storage type: fp32 product, one rounding)
// Gemma's (1 + weight) and T5's weight-dtype cast are other orders: the generic adapter checks each module's own
// output against this op on its first call and keeps HF's forward when they differ.
//
// Same structure as layernorm.cu: a register kernel holds the row between the statistic and the output (one read,
// one write) up to kRowValuesPerThread * 1024 elements; a streaming kernel re-reads longer rows (mostly from L2).
// Each in a 16-byte vector flavour and a scalar one.
#include <algorithm>
#include <climits>

#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kMaxThreads = 1024;
// Row values a thread holds in registers (as in layernorm.cu, where 16 measured best on H200).
constexpr int kRowValuesPerThread = 16;

// out = round(round(v * rstd) * weight) for one vector of the row.
template <typename T, int VEC>
__device__ __forceinline__ void scale_store(const T* __restrict__ weight,  // [hidden]
                                            T* __restrict__ out,           // [hidden] this row
                                            int64_t col, const float (&v)[VEC], float rstd) {
  float w[VEC], y[VEC];
  load_float<VEC>(weight + col, w);
#pragma unroll
  for (int j = 0; j < VEC; ++j) y[j] = round_to<T>(v[j] * rstd) * w[j];
  store_float<VEC>(out + col, y);
}

template <typename T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kMaxThreads, 1)
rms_norm_regs_kernel(const T* __restrict__ x,       // [rows, hidden]
                     const T* __restrict__ weight,  // [hidden]
                     T* __restrict__ out,           // [rows, hidden]
                     int64_t rows, int hidden, float eps) {
  __shared__ float scratch[32];
  const int num_vecs = hidden / VEC;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * hidden;
    Pack<T, VEC> vals[ITEMS];  // the storage type: half the registers of fp32 for fp16 / bf16
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < num_vecs) {
        vals[k] = load_pack<VEC>(x + base + static_cast<int64_t>(i) * VEC);
        float v[VEC];
        unpack_float(vals[k], v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) sq += v[j] * v[j];
      }
    }
    const float rstd = rsqrtf(block_sum(sq, scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < num_vecs) {
        float v[VEC];
        unpack_float(vals[k], v);
        scale_store<T, VEC>(weight, out + base, static_cast<int64_t>(i) * VEC, v, rstd);
      }
    }
  }
}

// Rows too long for registers: two strided passes over global memory (the second mostly hits L2).
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
rms_norm_stream_kernel(const T* __restrict__ x,       // [rows, hidden]
                       const T* __restrict__ weight,  // [hidden]
                       T* __restrict__ out,           // [rows, hidden]
                       int64_t rows, int hidden, float eps) {
  __shared__ float scratch[32];
  const int num_vecs = hidden / VEC;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * hidden;
    float sq = 0.0f;
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      float v[VEC];
      load_float<VEC>(x + base + static_cast<int64_t>(i) * VEC, v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sq += v[j] * v[j];
    }
    const float rstd = rsqrtf(block_sum(sq, scratch) / static_cast<float>(hidden) + eps);
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      const int64_t col = static_cast<int64_t>(i) * VEC;
      float v[VEC];
      load_float<VEC>(x + base + col, v);
      scale_store<T, VEC>(weight, out + base, col, v, rstd);
    }
  }
}

template <typename T, int VEC>
cudaError_t launch_with_vec(const void* x, const void* weight, void* out, int64_t rows, int hidden, float eps,
                            cudaStream_t stream) {
  // The scalar fp32 flavour spilled registers at 16 items (ptxas -warn-spills); 8 keeps it clean and rows past
  // 8 * 1024 scalar values, rare (odd hidden sizes or misaligned views), take the streaming kernel.
  constexpr int kItems = VEC > 1 ? kRowValuesPerThread / VEC : 8;
  const int64_t num_vecs = hidden / VEC;
  // gridDim.x is at most 2^31 - 1; the kernels stride over any rows beyond it.
  const auto grid = static_cast<unsigned>(std::min<int64_t>(rows, INT_MAX));
  const auto xp = static_cast<const T*>(x);
  const auto wp = static_cast<const T*>(weight);
  const auto op = static_cast<T*>(out);
  if (num_vecs <= static_cast<int64_t>(kItems) * kMaxThreads) {
    // As layernorm.cu: fewest threads that cover the row (vector path), or as many as useful (scalar path).
    const int64_t threads =
        VEC > 1 ? round_up(ceil_div(num_vecs, kItems), 32) : std::min<int64_t>(round_up(num_vecs, 32), kMaxThreads);
    rms_norm_regs_kernel<T, VEC, kItems><<<grid, static_cast<unsigned>(threads), 0, stream>>>(xp, wp, op, rows,
                                                                                              hidden, eps);
  } else {
    rms_norm_stream_kernel<T, VEC><<<grid, kMaxThreads, 0, stream>>>(xp, wp, op, rows, hidden, eps);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_rms_norm(const void* x, const void* weight, void* out, int64_t rows, int hidden, float eps,
                            cudaStream_t stream) {
  constexpr int kVec = kVec16<T>;
  // Row r starts at r * hidden elements: aligned bases and hidden % kVec == 0 align every row's vectors.
  const bool vectorize =
      hidden % kVec == 0 && is_aligned(x, 16) && is_aligned(weight, 16) && is_aligned(out, 16);
  return vectorize ? launch_with_vec<T, kVec>(x, weight, out, rows, hidden, eps, stream)
                   : launch_with_vec<T, 1>(x, weight, out, rows, hidden, eps, stream);
}

}  // namespace

cudaError_t rms_norm(DType dtype,
                     const void* x,       // [rows, hidden]
                     const void* weight,  // [hidden]
                     void* out,           // [rows, hidden]
                     int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  if (rows < 0 || hidden < 0 || hidden > INT_MAX) return cudaErrorInvalidValue;
  if (rows == 0 || hidden == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || out == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_rms_norm<T>(x, weight, out, rows, static_cast<int>(hidden), eps, stream);
  });
}

}  // namespace eet
