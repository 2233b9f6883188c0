// Device helpers shared by the eet kernels: dtype conversion, 16-byte vector access, sum reductions and
// the runtime-dtype -> template-type dispatch. Header-only; everything is inline or a template so several
// .cu files can include it.
//
// torch's extension build defines __CUDA_NO_HALF_OPERATORS__ / __CUDA_NO_HALF_CONVERSIONS__ /
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so nothing here relies on implicit __half / __nv_bfloat16
// conversions or operators: always go through to_float / from_float.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace eet {

// ---------------------------------------------------------------------------------------------------
// Conversions. Arithmetic is always done in fp32; storage types are converted at load and store.

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round-to-nearest-even, as torch's .to(dtype) does.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The value v takes once stored as T, back in fp32 (exact: every T is representable in fp32).
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

// ---------------------------------------------------------------------------------------------------
// Vector access. N elements of T read or written as one transaction: with N * sizeof(T) == 16 this is a
// single 128-bit load/store, which needs a 16-byte aligned address (callers check with is_aligned).
// N == 1 is the scalar path and has no alignment requirement beyond T's.

// Elements of T in 16 bytes: 4 for fp32, 8 for fp16 / bf16.
template <typename T>
constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& pack) {
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

template <int N, typename T>
__device__ __forceinline__ void unpack_float(const Pack<T, N>& pack, float (&out)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = to_float(pack.v[j]);
}

template <int N, typename T>
__device__ __forceinline__ void load_float(const T* p, float (&out)[N]) {
  unpack_float(load_pack<N>(p), out);
}

template <int N, typename T>
__device__ __forceinline__ void store_float(T* p, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int j = 0; j < N; ++j) pack.v[j] = from_float<T>(in[j]);
  store_pack(p, pack);
}

// Host side: may a pointer be accessed with `bytes`-wide vectors? nullptr counts as aligned (an absent
// optional argument must not force the scalar path).
inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---------------------------------------------------------------------------------------------------
// Reductions.

// Sum over the 32 lanes of a warp; every lane gets the total. All 32 lanes must call it.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Max over the 32 lanes of a warp; every lane gets it. All 32 lanes must call it.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block; every thread gets the total. Requirements: blockDim.x a multiple of 32 (at most
// 1024), 1-D block, every thread calls it (it synchronizes), scratch a __shared__ float[32].
// Consecutive calls may share scratch: the leading barrier keeps a call from overwriting partials that
// slower warps are still reading from the previous call.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  // Every warp folds the per-warp partials itself, which saves a broadcast through shared memory.
  return warp_sum(lane < num_warps ? scratch[lane] : 0.0f);
}

// ---------------------------------------------------------------------------------------------------
// Programmatic dependent launch (PDL, sm_90). At decode batch sizes a step is ~100 kernels of a few µs each, and
// each one's launch, block scheduling and first global loads add ~1-2 µs of latency on top of its own work.
// A kernel launched with launch_pdl may start while the kernel before it on the stream still runs, once every block
// of that kernel has called pdl_trigger() (or exited), and overlap that latency with the previous kernel's tail.
// Contract for a kernel launched with launch_pdl:
// - before pdl_wait() it reads only memory that no kernel of the step writes (weights, biases) and writes nothing;
// - pdl_wait() returns once the previous grid has completed and its writes are visible (at once when the kernel
//   was not launched as a dependent, e.g. the first kernel of a graph or after a non-PDL kernel).
// pdl_trigger() only lets the next kernel be scheduled early; that kernel still waits in its own pdl_wait().
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

// May PDL launches be recorded into a CUDA graph here? Probed once per process (pdl.cu): a refusal during a
// capture would invalidate the capture, so a capture never tries what the probe did not see work.
bool pdl_capture_supported();

// Launch kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the stream's previous
// kernel, with an optional thread block cluster of `cluster_y` blocks along y (1: none). A refused PDL attribute
// falls back to a plain launch (same cluster); the kernel must follow the contract above either way.
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       unsigned cluster_y, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attrs[2];
  unsigned n = 0;
  if (cluster_y > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = 1;
    attrs[n].val.clusterDim.y = cluster_y;
    attrs[n].val.clusterDim.z = 1;
    ++n;
  }
  const unsigned cluster_attrs = n;
  bool pdl = true;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
    (void)cudaGetLastError();  // unknown capture state: launch plainly
    pdl = false;
  } else if (capture != cudaStreamCaptureStatusNone) {
    pdl = pdl_capture_supported();
  }
  if (pdl) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attrs;
  cfg.numAttrs = n;
  cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
  if (err == cudaSuccess || n == cluster_attrs) return err;
  (void)cudaGetLastError();  // clear the refusal; retry without PDL
  cfg.numAttrs = cluster_attrs;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

// ---------------------------------------------------------------------------------------------------
// Host helpers.

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Runtime DType -> C++ storage type. f is a generic callable taking a TypeTag<T>:
//   dispatch_dtype(dtype, [&](auto tag) { using T = typename decltype(tag)::type; return launch<T>(...); });
// An unknown value returns cudaErrorInvalidValue instead of running the kernel with the wrong type.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(TypeTag<float>{});
    case DType::kFloat16: return f(TypeTag<__half>{});
    case DType::kBFloat16: return f(TypeTag<__nv_bfloat16>{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace eet
