// Small-batch linear layer (eet::small_linear in kernels.h): out = act(round_T(x @ W + bias)) for m <= 8 rows, W in
// GPT-2's Conv1D layout [K, N] (N contiguous). At decode batch sizes a linear layer is a matrix-vector product that
// must stream W from HBM once; cuBLAS picks tiled GEMM kernels (and split-K + a separate reduce kernel) that take
// ~4.3 us for 1-5 MB of fp16 weights on an H200, where 4.16 TB/s allows ~1 us (profile-steps-h200.md). What is left
// at these sizes is latency: the launch, the first HBM round trip, and every dependent step after it.
//
// Work split, and why:
// - A block owns a tile of kTileCols columns (8 threads x 16 bytes: 64 fp16/bf16 or 32 fp32 columns), so each K row
//   of the tile is one 128-byte line read by 8 threads with 16-byte loads. Narrow tiles give many blocks even for
//   N = 768, and 128 bytes is a whole L2 line, so the read stays fully used.
// - The block's 256 threads form 32 K-slices (8 per row segment x 4 per warp x 8 warps); slice s reads rows
//   k_begin + s, + 32, ... in batches of kUnroll rows, and the next batch is loaded before the current one is used.
// - K is split across the blocks of one thread block cluster (grid y = cluster y = splits <= 8) when the tiles alone
//   do not fill the GPU. The blocks of a cluster sum their partials over distributed shared memory in split order
//   0, 1, ... (deterministic), each block finishing a slice of the tile's outputs: no global workspace, no counters,
//   no second kernel, and one cluster barrier instead of a global-memory round trip.
// - Programmatic dependent launch (common.cuh): the first W batch is requested before pdl_wait(), so its HBM latency
//   overlaps the previous kernel's tail; x, which that kernel wrote, is read only after.
// - x rows are staged in shared memory as fp32 [k][row], kMaxKChunk rows at a time (any K), so one thread reads all
//   its rows' x values for a k with broadcast loads.
// - Within a block, the 4 slices of a warp are summed with shuffles and the 8 warps through shared memory in warp
//   order: fixed orders, so results are bit-identical run to run.
// W rows are read with 16-byte vectors when N and W's row stride are multiples of the vector width and W is 16-byte
// aligned; otherwise every thread still owns 8 (4) consecutive columns but loads them one element at a time with
// per-column bounds checks (the scalar tail path; no out-of-bounds access at any N).
#include <cooperative_groups.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "cluster_fit.h"
#include "common.cuh"
#include "gelu_staged.cuh"
#include "kernels.h"

namespace eet {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kColThreads = 8;                     // threads across one K row of a tile: 8 x 16 B = one 128-byte line
constexpr int kSlices = kThreads / kColThreads;    // K rows a block reads per step
constexpr int kSlicesPerWarp = 32 / kColThreads;
constexpr int kMaxKChunk = 1024;                   // x rows staged at a time: kRows x 1024 fp32 = 32 KB at 8 rows
// Fewer rows per block than this and the block's fixed costs (x staging, reductions) outweigh its loads.
constexpr int64_t kMinKChunk = 64;
// Two resident blocks per SM (256 threads, <= 128 registers) keep enough loads in flight to cover HBM latency.
constexpr int kBlocksPerSm = 2;
constexpr int64_t kMaxSplits = kPortableClusterWidth;

enum Act : int { kActNone = 0, kActGeluTanhStaged = 1 };

template <typename T>
constexpr int kTileCols = kColThreads * kVec16<T>;

// W rows per slice loaded before they are used (and as many more in flight during their use). More would put more
// bytes in flight but spills under the 128-register cap of two blocks per SM (8 rows: 64 accumulators already).
template <int kRows>
constexpr int kUnroll = kRows >= 8 ? 2 : 4;

// Shared floats for the staged x [kMaxKChunk][kRows], later reused for the warps' partials [kWarps][kRows][TN].
template <typename T, int kRows>
constexpr int kSmemFloats = kRows * (kMaxKChunk > kWarps * kTileCols<T> ? kMaxKChunk : kWarps * kTileCols<T>);

// U W vectors of one thread: rows k0, k0 + kSlices, ...; rows >= k_end and columns >= n read as zero.
template <bool kVector, int U, typename T, int VEC>
__device__ __forceinline__ void load_w(const T* __restrict__ w, int64_t ldw, int64_t n, int64_t col, int64_t k0,
                                       int64_t k_end, Pack<T, VEC> (&dst)[U]) {
  const T zero = from_float<T>(0.0f);
#pragma unroll
  for (int u = 0; u < U; ++u) {
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
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
small_linear_kernel(const T* __restrict__ x,     // [m, k], row stride ldx
                    const T* __restrict__ w,     // [k, n], row stride ldw
                    const T* __restrict__ bias,  // [n] or nullptr
                    T* __restrict__ out,         // [m, n]
                    int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldw, int64_t k_chunk, int act) {
  constexpr int VEC = kVec16<T>;
  constexpr int TN = kTileCols<T>;
  constexpr int U = kUnroll<kRows>;
  constexpr int kStep = U * kSlices;                // K rows a block consumes per batch
  constexpr int kBatchesPerStage = kMaxKChunk / kStep;
  static_assert(kMaxKChunk % kStep == 0, "a staged x chunk must hold whole batches");
  constexpr int kXIters = (kRows * kMaxKChunk + kThreads - 1) / kThreads;
  constexpr int kOuts = kRows * TN;
  __shared__ __align__(16) float smem[kSmemFloats<T, kRows>];
  __shared__ float part[kOuts];  // this block's sums of the tile, read by the cluster's blocks

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int slice = warp * kSlicesPerWarp + lane / kColThreads;
  const int64_t tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t col0 = tile * TN;
  const int64_t col = col0 + static_cast<int64_t>(lane % kColThreads) * VEC;
  const int64_t k_begin = split * k_chunk;
  const int64_t k_end = k < k_begin + k_chunk ? k : k_begin + k_chunk;
  const int64_t k_len = k_end > k_begin ? k_end - k_begin : 0;
  const int batches = static_cast<int>((k_len + kStep - 1) / kStep);  // block-uniform

  // W is not written by any kernel of a step: its first batch is requested before waiting on the previous kernel.
  pdl_trigger();
  Pack<T, VEC> w_cur[U];
  load_w<kVector, U>(w, ldw, n, col, k_begin + slice, k_end, w_cur);
  pdl_wait();

  float acc[kRows][VEC];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[r][j] = 0.0f;
  }
  for (int b = 0; b < batches; ++b) {
    const int64_t k0 = k_begin + static_cast<int64_t>(b) * kStep + slice;  // this thread's first row of batch b
    Pack<T, VEC> w_next[U];
    if (b + 1 < batches) load_w<kVector, U>(w, ldw, n, col, k0 + kStep, k_end, w_next);  // in flight during b
    const int64_t stage_begin = k_begin + static_cast<int64_t>(b / kBatchesPerStage) * kMaxKChunk;
    if (b % kBatchesPerStage == 0) {  // block-uniform: stage the next kMaxKChunk rows of x
      const int64_t stage_len = k_end - stage_begin < kMaxKChunk ? k_end - stage_begin : kMaxKChunk;
      if (b > 0) __syncthreads();  // every warp is done with the previous chunk
#pragma unroll 4
      for (int it = 0; it < kXIters; ++it) {  // rows >= m are staged as zeros
        const int i = tid + it * kThreads, kk = i / kRows, r = i % kRows;
        if (kk < stage_len) smem[i] = r < m ? to_float(x[r * ldx + stage_begin + kk]) : 0.0f;
      }
      __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t kk = k0 + static_cast<int64_t>(u) * kSlices;
      if (kk < k_end) {
        const float* xs = smem + (kk - stage_begin) * kRows;
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
    if (b + 1 < batches) {
#pragma unroll
      for (int u = 0; u < U; ++u) w_cur[u] = w_next[u];
    }
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
  for (int idx = tid; idx < kOuts; idx += kThreads) {  // idx = r * TN + c
    float s = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) s += red[wi * kOuts + idx];
    part[idx] = s;
  }

  if (splits == 1) {
    __syncthreads();
    for (int idx = tid; idx < kOuts; idx += kThreads) {
      const int r = idx / TN;
      const int64_t gcol = col0 + idx % TN;
      if (r < m && gcol < n) out[r * n + gcol] = finish<T>(part[idx], bias, gcol, act);
    }
    return;
  }

  // Split-K over the cluster: block `split` finishes outputs [split * per, (split + 1) * per) of the tile, summing
  // every block's part in split order. The second barrier keeps each block's shared memory alive until all peers
  // have read it.
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's part is written and visible to the cluster
  const int per = static_cast<int>((kOuts + splits - 1) / splits);
  const int first = static_cast<int>(split) * per;
  const int last = first + per < kOuts ? first + per : kOuts;
  for (int idx = first + tid; idx < last; idx += kThreads) {
    const int r = idx / TN;
    const int64_t gcol = col0 + idx % TN;
    if (r < m && gcol < n) {
      float s = 0.0f;
      for (unsigned sp = 0; sp < static_cast<unsigned>(splits); ++sp) s += cluster.map_shared_rank(part, sp)[idx];
      out[r * n + gcol] = finish<T>(s, bias, gcol, act);
    }
  }
  cluster.sync();
}

template <typename T, int kRows, bool kVector>
cudaError_t launch(const SmallLinearParams& p, SmallLinearPlan plan, int act, cudaStream_t stream) {
  if (plan.splits > 1 && !plan.forced) {
    // As many splits as the device holds in one wave of clusters (cluster_fit.h): planning by blocks per SM alone
    // put 7 x 36 clusters of k768 n2304 into a second wave (8.4 us against 5.3 us at 6 splits on the H200).
    static ClusterFitCache fit_cache;  // one per kernel instantiation
    const int width = cluster_width_that_fits(reinterpret_cast<const void*>(small_linear_kernel<T, kRows, kVector>),
                                              kThreads, 0, static_cast<int>(plan.splits), plan.tiles, fit_cache);
    plan.k_chunk = ceil_div(p.k, width);
    plan.splits = ceil_div(p.k, plan.k_chunk);
  }
  const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.splits));
  return launch_pdl(small_linear_kernel<T, kRows, kVector>, grid, dim3(kThreads), 0, stream,
                    static_cast<unsigned>(plan.splits), static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
                    static_cast<const T*>(p.bias), static_cast<T*>(p.out), p.m, p.n, p.k, p.ldx, p.ldw, plan.k_chunk,
                    act);
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

SmallLinearPlan small_linear_plan(DType dtype, int64_t m, int64_t n, int64_t k, int num_sms, int64_t forced_splits) {
  (void)m;
  const int64_t tile_cols = kColThreads * (dtype == DType::kFloat32 ? 4 : 8);
  SmallLinearPlan plan{std::max<int64_t>(ceil_div(n, tile_cols), 1), 1, std::max<int64_t>(k, 1), false};
  if (k <= 0) return plan;
  // As many K splits as keep the grid within one wave of kBlocksPerSm blocks per SM (a second, partial wave would
  // cost a whole extra block time), at most a cluster's worth, and none shorter than kMinKChunk rows.
  int64_t splits = static_cast<int64_t>(kBlocksPerSm) * std::max(num_sms, 1) / plan.tiles;
  splits = std::min(splits, std::max<int64_t>(k / kMinKChunk, 1));
  splits = std::clamp<int64_t>(splits, 1, kMaxSplits);
  // forced_splits > 0 (the sanitizer harness, tests/gpu/harness_small_linear.cu) takes every split count.
  if (forced_splits > 0) {
    splits = std::clamp<int64_t>(forced_splits, 1, std::min<int64_t>(kMaxSplits, k));
    plan.forced = true;
  }
  plan.k_chunk = ceil_div(k, splits);
  plan.splits = ceil_div(k, plan.k_chunk);  // no empty split
  return plan;
}

cudaError_t small_linear(DType dtype, const SmallLinearParams& p, const SmallLinearPlan& plan, cudaStream_t stream) {
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.m > kSmallLinearMaxRows) return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  if (p.out == nullptr || (p.k > 0 && (p.x == nullptr || p.weight == nullptr))) return cudaErrorInvalidValue;
  if (plan.splits < 1 || plan.splits > kMaxSplits || plan.tiles > INT_MAX || plan.k_chunk < 1 ||
      plan.splits * plan.k_chunk < p.k) {
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
