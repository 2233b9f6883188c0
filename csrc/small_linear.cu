// Small-batch linear layer (eet::small_linear in kernels.h): out = act(round_T(x @ W + bias)) for m <= 8 rows, W in
// GPT-2's Conv1D layout [K, N] (N contiguous). At decode batch sizes a linear layer is a matrix-vector product that
// must stream W from HBM once; cuBLAS picks tiled GEMM kernels (and split-K + a separate reduce kernel) that take
// ~4.3 us for 1-5 MB of fp16 weights on an H200, where 4.16 TB/s allows ~1 us (profile-steps-h200.md).
//
// Work split, and why:
// - A block owns a tile of kTileCols columns (8 threads x 16 bytes: 64 fp16/bf16 or 32 fp32 columns), so each K row
//   of the tile is one 128-byte line read by 8 threads with 16-byte loads. Narrow tiles give many blocks even for
//   N = 768, and 128 bytes is a whole L2 line, so the read stays fully used.
// - The block's 256 threads form 32 K-slices (8 per row segment x 4 per warp x 8 warps); slice s reads rows
//   k_begin + s, + 32, ... and keeps kRows x 8 fp32 accumulators. kUnroll rows per slice are loaded before any FMA,
//   and the next batch is loaded before the current one is used, so each thread has 4-8 16-byte loads in flight:
//   the kernel is bound by memory latency x bytes in flight, not by arithmetic.
// - x rows [k_begin, k_end) are staged in shared memory as fp32 [k][row], so one thread reads all its rows' x values
//   for a k with broadcast loads. The first W batch is issued before the staging, so the x read overlaps it.
// - When the tiles alone give fewer than kBlocksPerSm blocks per SM, K is split across blocks too (gridDim.y): each
//   block writes fp32 partials to a workspace, bumps the tile's arrival counter, and the last block to arrive sums
//   the partials in split order 0, 1, ... (deterministic whichever block arrives last), adds bias, applies the
//   activation, writes out and resets the counter to 0, so the next launch (or graph replay) finds it zero.
// - Within a block, the 4 slices of a warp are summed with shuffles and the 8 warps through shared memory in warp
//   order: fixed orders, so results are bit-identical run to run.
// W rows are read with 16-byte vectors when N and W's row stride are multiples of the vector width and W is 16-byte
// aligned; otherwise every thread still owns 8 (4) consecutive columns but loads them one element at a time with
// per-column bounds checks (the scalar tail path; no out-of-bounds access at any N).
#include <algorithm>
#include <climits>

#include "common.cuh"
#include "gelu_staged.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kColThreads = 8;                     // threads across one K row of a tile: 8 x 16 B = one 128-byte line
constexpr int kSlices = kThreads / kColThreads;    // K rows a block reads per step
constexpr int kSlicesPerWarp = 32 / kColThreads;
constexpr int kUnroll = 4;                         // K rows per slice loaded before they are used
constexpr int64_t kMaxKChunk = 512;                // x staged per block: kRows x 512 fp32 = 16 KB at 8 rows
// Fewer rows per block than this and the block's fixed costs (x staging, reductions) outweigh its loads.
constexpr int64_t kMinKChunk = 64;
// Two resident blocks per SM (256 threads, ~120 registers at 8 rows in fp16) keep enough loads in flight to
// cover HBM latency.
constexpr int64_t kBlocksPerSm = 2;
constexpr int64_t kMaxGridY = 65535;

enum Act : int { kActNone = 0, kActGeluTanhStaged = 1 };

template <typename T>
constexpr int kTileCols = kColThreads * kVec16<T>;

// Shared floats: staged x [kMaxKChunk][kRows], later reused for the warps' partials [kWarps][kRows][kTileCols].
template <typename T, int kRows>
constexpr int kSmemFloats = kRows * (kMaxKChunk > kWarps * kTileCols<T> ? kMaxKChunk : kWarps * kTileCols<T>);

// kUnroll W vectors of one thread: rows k0, k0 + kSlices, ...; rows >= k_end and columns >= n read as zero.
template <bool kVector, typename T, int VEC>
__device__ __forceinline__ void load_w(const T* __restrict__ w, int64_t ldw, int64_t n, int64_t col, int64_t k0,
                                       int64_t k_end, Pack<T, VEC> (&dst)[kUnroll]) {
  const T zero = from_float<T>(0.0f);
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t kk = k0 + static_cast<int64_t>(u) * kSlices;
    if constexpr (kVector) {
      // n % VEC == 0 here, so col < n means the whole vector is inside the row.
      if (kk < k_end && col < n) {
        dst[u] = load_pack<VEC>(w + kk * ldw + col);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) dst[u].v[j] = zero;
      }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) dst[u].v[j] = (kk < k_end && col + j < n) ? w[kk * ldw + col + j] : zero;
    }
  }
}

// Bias, activation and the one rounding to T of an output element (acc: the fp32 dot product).
template <typename T>
__device__ __forceinline__ T finish(float acc, const T* __restrict__ bias, int64_t col, int act) {
  const float v = bias != nullptr ? acc + to_float(bias[col]) : acc;
  return from_float<T>(act == kActGeluTanhStaged ? gelu_tanh_staged<T>(v) : v);
}

template <typename T, int kRows, bool kVector>
__global__ void __launch_bounds__(kThreads)
small_linear_kernel(const T* __restrict__ x,        // [m, k], row stride ldx
                    const T* __restrict__ w,        // [k, n], row stride ldw
                    const T* __restrict__ bias,     // [n] or nullptr
                    T* __restrict__ out,            // [m, n]
                    float* __restrict__ partials,   // [splits, m, n] when gridDim.y > 1
                    int* __restrict__ counters,     // [tiles] when gridDim.y > 1
                    int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldw, int64_t k_chunk, int act) {
  constexpr int VEC = kVec16<T>;
  constexpr int TN = kTileCols<T>;
  constexpr int kXIters = (kRows * kMaxKChunk + kThreads - 1) / kThreads;
  constexpr int kOuts = kRows * TN;
  constexpr int kOutIters = (kOuts + kThreads - 1) / kThreads;
  __shared__ __align__(16) float smem[kSmemFloats<T, kRows>];
  __shared__ int is_last;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int slice = warp * kSlicesPerWarp + lane / kColThreads;
  const int64_t tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t col0 = tile * TN;
  const int64_t col = col0 + static_cast<int64_t>(lane % kColThreads) * VEC;
  const int64_t k_begin = split * k_chunk;
  const int64_t k_end = k < k_begin + k_chunk ? k : k_begin + k_chunk;
  const int k_len = static_cast<int>(k_end > k_begin ? k_end - k_begin : 0);  // <= kMaxKChunk

  Pack<T, VEC> w_cur[kUnroll];
  load_w<kVector>(w, ldw, n, col, k_begin + slice, k_end, w_cur);

  // Stage x: all loads first, then the shared stores (one L2 round trip, not kXIters). Rows >= m are zero.
  float xv[kXIters];
#pragma unroll
  for (int it = 0; it < kXIters; ++it) {
    const int i = tid + it * kThreads, kk = i / kRows, r = i % kRows;
    xv[it] = (kk < k_len && r < m) ? to_float(x[r * ldx + k_begin + kk]) : 0.0f;
  }
#pragma unroll
  for (int it = 0; it < kXIters; ++it) {
    const int i = tid + it * kThreads;
    if (i / kRows < k_len) smem[i] = xv[it];
  }
  __syncthreads();

  float acc[kRows][VEC];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[r][j] = 0.0f;
  }
  constexpr int64_t kStep = static_cast<int64_t>(kUnroll) * kSlices;
  for (int64_t k0 = k_begin + slice; k0 < k_end; k0 += kStep) {
    Pack<T, VEC> w_next[kUnroll];
    load_w<kVector>(w, ldw, n, col, k0 + kStep, k_end, w_next);  // in flight while w_cur is used
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kk = k0 + static_cast<int64_t>(u) * kSlices;
      if (kk < k_end) {
        const float* xs = smem + (kk - k_begin) * kRows;
        float wf[VEC];
        unpack_float(w_cur[u], wf);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float xr = xs[r];
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc[r][j] = fmaf(xr, wf[j], acc[r][j]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) w_cur[u] = w_next[u];
  }

  // The 4 slices of a warp (lanes c, c + 8, c + 16, c + 24) hold the same columns: sum them with shuffles.
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float v = acc[r][j];
#pragma unroll
      for (int offset = kColThreads; offset < 32; offset <<= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
      acc[r][j] = v;
    }
  }
  __syncthreads();  // every warp is done with the staged x, whose shared memory now takes the warps' partials
  float* red = smem;  // [kWarps][kRows][TN]
  if (lane < kColThreads) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) red[(warp * kRows + r) * TN + lane * VEC + j] = acc[r][j];
    }
  }
  __syncthreads();
  float total[kOutIters];
#pragma unroll
  for (int it = 0; it < kOutIters; ++it) {
    const int idx = tid + it * kThreads;  // r * TN + c
    float s = 0.0f;
    if (idx < kOuts) {
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) s += red[wi * kOuts + idx];
    }
    total[it] = s;
  }

  if (splits == 1) {
#pragma unroll
    for (int it = 0; it < kOutIters; ++it) {
      const int idx = tid + it * kThreads, r = idx / TN;
      const int64_t gcol = col0 + idx % TN;
      if (idx < kOuts && r < m && gcol < n) out[r * n + gcol] = finish<T>(total[it], bias, gcol, act);
    }
    return;
  }

  // Split-K: publish this block's partial, then the last block of the tile to arrive finishes it.
#pragma unroll
  for (int it = 0; it < kOutIters; ++it) {
    const int idx = tid + it * kThreads, r = idx / TN;
    const int64_t gcol = col0 + idx % TN;
    if (idx < kOuts && r < m && gcol < n) partials[(split * m + r) * n + gcol] = total[it];
  }
  __threadfence();  // the partials are visible device-wide before this block's arrival is counted
  __syncthreads();
  if (tid == 0) is_last = atomicAdd(counters + tile, 1) == static_cast<int>(splits - 1);
  __syncthreads();
  if (!is_last) return;
  __threadfence();
#pragma unroll
  for (int it = 0; it < kOutIters; ++it) {
    const int idx = tid + it * kThreads, r = idx / TN;
    const int64_t gcol = col0 + idx % TN;
    if (idx < kOuts && r < m && gcol < n) {
      float s = 0.0f;
      // __ldcg reads L2, where the other SMs' partials are (not a possibly stale L1 line); fixed split order.
      for (int64_t sp = 0; sp < splits; ++sp) s += __ldcg(partials + (sp * m + r) * n + gcol);
      out[r * n + gcol] = finish<T>(s, bias, gcol, act);
    }
  }
  if (tid == 0) counters[tile] = 0;  // every block of this tile has arrived: reset for the next launch
}

template <typename T, int kRows, bool kVector>
cudaError_t launch(const SmallLinearParams& p, const SmallLinearPlan& plan, int act, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.splits));
  small_linear_kernel<T, kRows, kVector><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<const T*>(p.bias),
      static_cast<T*>(p.out), static_cast<float*>(p.workspace), p.counters, p.m, p.n, p.k, p.ldx, p.ldw,
      plan.k_chunk, act);
  return cudaGetLastError();
}

// Rows are rounded up to 1, 2, 4 or 8 (the padded rows are zeros in shared memory and never stored): four
// instantiations per dtype instead of eight, at the cost of some FMAs, which are not the bound.
template <typename T, bool kVector>
cudaError_t dispatch_rows(const SmallLinearParams& p, const SmallLinearPlan& plan, int act, cudaStream_t stream) {
  switch (p.m) {
    case 1: return launch<T, 1, kVector>(p, plan, act, stream);
    case 2: return launch<T, 2, kVector>(p, plan, act, stream);
    case 3:
    case 4: return launch<T, 4, kVector>(p, plan, act, stream);
    case 5:
    case 6:
    case 7:
    case 8: return launch<T, 8, kVector>(p, plan, act, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

SmallLinearPlan small_linear_plan(DType dtype, int64_t m, int64_t n, int64_t k, int num_sms) {
  const int64_t tile_cols = kColThreads * (dtype == DType::kFloat32 ? 4 : 8);
  SmallLinearPlan plan{std::max<int64_t>(ceil_div(n, tile_cols), 1), 1, k, 0};
  if (k <= 0) return plan;
  // Enough blocks for kBlocksPerSm per SM, each with at least kMinKChunk rows, and no block staging more than
  // kMaxKChunk rows of x (that bound wins over the others).
  int64_t splits = ceil_div(kBlocksPerSm * std::max(num_sms, 1), plan.tiles);
  splits = std::min(splits, std::max<int64_t>(k / kMinKChunk, 1));
  splits = std::max(splits, ceil_div(k, kMaxKChunk));
  plan.k_chunk = ceil_div(k, splits);
  plan.splits = ceil_div(k, plan.k_chunk);  // no empty split
  if (plan.splits > 1) plan.workspace_bytes = static_cast<size_t>(plan.splits * m * n) * sizeof(float);
  return plan;
}

cudaError_t small_linear(DType dtype, const SmallLinearParams& p, const SmallLinearPlan& plan, cudaStream_t stream) {
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.m > kSmallLinearMaxRows) return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  if (p.out == nullptr || (p.k > 0 && (p.x == nullptr || p.weight == nullptr))) return cudaErrorInvalidValue;
  if (plan.k_chunk > kMaxKChunk || plan.splits < 1 || plan.splits > kMaxGridY || plan.tiles > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  if (plan.splits > 1 && (p.workspace == nullptr || p.counters == nullptr || plan.tiles > kSmallLinearCounters)) {
    return cudaErrorInvalidValue;
  }
  int act = kActNone;
  switch (p.act) {
    case LinearActivation::kNone: act = kActNone; break;
    case LinearActivation::kGeluTanhStaged: act = kActGeluTanhStaged; break;
    default: return cudaErrorInvalidValue;
  }
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kVec = kVec16<T>;
    // Row k of W starts at k * ldw elements: an aligned base and ldw, n multiples of kVec keep every vector
    // aligned and whole.
    const bool vectorize = p.n % kVec == 0 && p.ldw % kVec == 0 && is_aligned(p.weight, 16);
    return vectorize ? dispatch_rows<T, true>(p, plan, act, stream) : dispatch_rows<T, false>(p, plan, act, stream);
  });
}

}  // namespace eet
