// LayerNorm over the last dim, optionally fused with the residual add before it (eet::layer_norm in
// kernels.h). One block per row; the block folds the row so that every thread handles several elements
// (any hidden size works, no cap at 1024 threads).
//
// Numerics follow eet_hf/ops/reference.py: fp32 statistics with the centered (two-pass) variance, biased
// as torch's; with a residual, x + residual is rounded to the storage dtype first and the rounded values
// are both written to sum_out and normalized (HF computes `a + b` in the storage dtype, then LayerNorm).
//
// Two kernels:
//  - layer_norm_regs_kernel keeps the row in registers between the statistics and the normalization:
//    one read of the input, one write of the output. Used up to kRowValuesPerThread * 1024 elements.
//  - layer_norm_stream_kernel re-reads the row from global memory (mostly L2) for each of its three
//    passes (mean, variance, normalize). Only for rows too long for registers, where speed matters less.
// Each comes in a 16-byte vector flavour (hidden a multiple of the vector width, every pointer aligned)
// and a scalar one for everything else.
#include <algorithm>
#include <climits>

#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kMaxThreads = 1024;
// Row values a thread holds in registers in the register kernel (so rows up to 16 * 1024 elements take
// it). Fewer threads per row with several vectors each measured faster on H200 than one vector per
// thread (more loads in flight per thread, shorter reductions); 16 beat 32 (fewer registers, more rows
// resident per SM). A tuning knob, not a correctness one.
constexpr int kRowValuesPerThread = 16;

// One vector of the values to normalize, in the storage type: x, or x + residual rounded to T.
// write_sum stores that rounded sum to sum_out (the stream kernel recomputes it in later passes rather
// than reading sum_out back: a read of data this kernel wrote must not take the read-only cache path
// that __restrict__ allows).
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_input(const T* __restrict__ x,         // [rows, hidden]
                                                   const T* __restrict__ residual,  // [rows, hidden] or nullptr
                                                   T* __restrict__ sum_out,         // [rows, hidden]
                                                   int64_t offset, bool write_sum) {
  Pack<T, VEC> p = load_pack<VEC>(x + offset);
  if (residual != nullptr) {
    const Pack<T, VEC> r = load_pack<VEC>(residual + offset);
#pragma unroll
    for (int j = 0; j < VEC; ++j) p.v[j] = from_float<T>(to_float(p.v[j]) + to_float(r.v[j]));
    if (write_sum) store_pack(sum_out + offset, p);
  }
  return p;
}

// out = (v - mean) * rstd * weight + bias for one vector of the row.
template <typename T, int VEC>
__device__ __forceinline__ void normalize_store(const T* __restrict__ weight,  // [hidden]
                                                const T* __restrict__ bias,    // [hidden] or nullptr
                                                T* __restrict__ out,           // [hidden] this row
                                                int64_t col, const float (&v)[VEC], float mean, float rstd) {
  float w[VEC], b[VEC], y[VEC];
  load_float<VEC>(weight + col, w);
  if (bias != nullptr) {
    load_float<VEC>(bias + col, b);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) b[j] = 0.0f;
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) y[j] = (v[j] - mean) * rstd * w[j] + b[j];
  store_float<VEC>(out + col, y);
}

// Row kept in registers: thread t holds vectors t, t + blockDim.x, ... (ITEMS of them at most, which the
// launcher guarantees covers the row), so consecutive threads touch consecutive 16-byte chunks.
// (The explicit minimum of 1 block per SM: without it ptxas chose 32 registers and spilled.)
template <typename T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kMaxThreads, 1)
layer_norm_regs_kernel(const T* __restrict__ x,         // [rows, hidden]
                       const T* __restrict__ residual,  // [rows, hidden] or nullptr
                       const T* __restrict__ weight,    // [hidden]
                       const T* __restrict__ bias,      // [hidden] or nullptr
                       T* __restrict__ out,             // [rows, hidden]
                       T* __restrict__ sum_out,         // [rows, hidden]; written iff residual
                       int64_t rows, int hidden, float eps) {
  __shared__ float scratch[32];
  const int num_vecs = hidden / VEC;
  pdl_trigger();
  pdl_wait();  // x and residual come from the previous kernel (PDL contract, common.cuh)
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * hidden;
    // Held in the storage type: half the registers of fp32 for fp16 / bf16, hence more rows in flight.
    Pack<T, VEC> vals[ITEMS];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < num_vecs) {
        vals[k] = load_input<T, VEC>(x, residual, sum_out, base + static_cast<int64_t>(i) * VEC, true);
        float v[VEC];
        unpack_float(vals[k], v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum += v[j];
      }
    }
    const float mean = block_sum(sum, scratch) / static_cast<float>(hidden);

    // Centered second pass over the registers: no cancellation when |mean| >> std.
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < num_vecs) {
        float v[VEC];
        unpack_float(vals[k], v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float d = v[j] - mean;
          sq += d * d;
        }
      }
    }
    const float rstd = rsqrtf(block_sum(sq, scratch) / static_cast<float>(hidden) + eps);

#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < num_vecs) {
        float v[VEC];
        unpack_float(vals[k], v);
        normalize_store<T, VEC>(weight, bias, out + base, static_cast<int64_t>(i) * VEC, v, mean, rstd);
      }
    }
  }
}

// Rows too long for registers: three strided passes over global memory (the row is mostly still in L2
// for the second and third). Only the first pass writes sum_out.
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
layer_norm_stream_kernel(const T* __restrict__ x,         // [rows, hidden]
                         const T* __restrict__ residual,  // [rows, hidden] or nullptr
                         const T* __restrict__ weight,    // [hidden]
                         const T* __restrict__ bias,      // [hidden] or nullptr
                         T* __restrict__ out,             // [rows, hidden]
                         T* __restrict__ sum_out,         // [rows, hidden]; written iff residual
                         int64_t rows, int hidden, float eps) {
  __shared__ float scratch[32];
  const int num_vecs = hidden / VEC;
  pdl_trigger();
  pdl_wait();  // x and residual come from the previous kernel (PDL contract, common.cuh)
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * hidden;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      float v[VEC];
      unpack_float(load_input<T, VEC>(x, residual, sum_out, base + static_cast<int64_t>(i) * VEC, true), v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += v[j];
    }
    const float mean = block_sum(sum, scratch) / static_cast<float>(hidden);

    float sq = 0.0f;
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      float v[VEC];
      unpack_float(load_input<T, VEC>(x, residual, sum_out, base + static_cast<int64_t>(i) * VEC, false), v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float d = v[j] - mean;
        sq += d * d;
      }
    }
    const float rstd = rsqrtf(block_sum(sq, scratch) / static_cast<float>(hidden) + eps);

    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      const int64_t col = static_cast<int64_t>(i) * VEC;
      float v[VEC];
      unpack_float(load_input<T, VEC>(x, residual, sum_out, base + col, false), v);
      normalize_store<T, VEC>(weight, bias, out + base, col, v, mean, rstd);
    }
  }
}

struct LayerNormArgs {
  const void* x;         // [rows, hidden]
  const void* residual;  // [rows, hidden] or nullptr
  const void* weight;    // [hidden]
  const void* bias;      // [hidden] or nullptr
  void* out;             // [rows, hidden]
  void* sum_out;         // [rows, hidden] or nullptr
  int64_t rows;
  int hidden;
  float eps;
};

// Picks the kernel and block size for vector width VEC (1 = scalar path).
template <typename T, int VEC>
cudaError_t launch_with_vec(const LayerNormArgs& a, cudaStream_t stream) {
  constexpr int kItems = kRowValuesPerThread / VEC;
  const int64_t num_vecs = a.hidden / VEC;
  // gridDim.x is at most 2^31 - 1; the kernels stride over any rows beyond it.
  const auto grid = static_cast<unsigned>(std::min<int64_t>(a.rows, INT_MAX));
  const auto x = static_cast<const T*>(a.x);
  const auto residual = static_cast<const T*>(a.residual);
  const auto weight = static_cast<const T*>(a.weight);
  const auto bias = static_cast<const T*>(a.bias);
  const auto out = static_cast<T*>(a.out);
  const auto sum_out = static_cast<T*>(a.sum_out);
  if (num_vecs <= static_cast<int64_t>(kItems) * kMaxThreads) {
    // Vector path: fewest threads that cover the row with kItems vectors each. Scalar path: as many
    // threads as useful, since each scalar access moves few bytes.
    const int64_t threads =
        VEC > 1 ? round_up(ceil_div(num_vecs, kItems), 32) : std::min<int64_t>(round_up(num_vecs, 32), kMaxThreads);
    return launch_pdl(layer_norm_regs_kernel<T, VEC, kItems>, dim3(grid), dim3(static_cast<unsigned>(threads)), 0,
                      stream, 1, x, residual, weight, bias, out, sum_out, a.rows, a.hidden, a.eps);
  }
  return launch_pdl(layer_norm_stream_kernel<T, VEC>, dim3(grid), dim3(kMaxThreads), 0, stream, 1, x, residual,
                    weight, bias, out, sum_out, a.rows, a.hidden, a.eps);
}

template <typename T>
cudaError_t launch_layer_norm(const LayerNormArgs& a, cudaStream_t stream) {
  constexpr int kVec = kVec16<T>;
  // Row r starts at r * hidden elements, so aligned base pointers and hidden % kVec == 0 make every
  // row's vectors aligned too.
  const bool vectorize = a.hidden % kVec == 0 && is_aligned(a.x, 16) && is_aligned(a.residual, 16) &&
                         is_aligned(a.weight, 16) && is_aligned(a.bias, 16) && is_aligned(a.out, 16) &&
                         is_aligned(a.sum_out, 16);
  return vectorize ? launch_with_vec<T, kVec>(a, stream) : launch_with_vec<T, 1>(a, stream);
}

}  // namespace

cudaError_t layer_norm(DType dtype,
                       const void* x,         // [rows, hidden]
                       const void* residual,  // [rows, hidden] or nullptr
                       const void* weight,    // [hidden]
                       const void* bias,      // [hidden] or nullptr
                       void* out,             // [rows, hidden]
                       void* sum_out,         // [rows, hidden]; required iff residual
                       int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  if (rows < 0 || hidden < 0 || hidden > INT_MAX) return cudaErrorInvalidValue;
  if (rows == 0 || hidden == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || out == nullptr || (residual != nullptr && sum_out == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const LayerNormArgs args{x, residual, weight, bias, out, residual != nullptr ? sum_out : nullptr,
                           rows, static_cast<int>(hidden), eps};
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_layer_norm<T>(args, stream);
  });
}

}  // namespace eet
