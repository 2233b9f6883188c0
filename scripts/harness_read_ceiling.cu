// Developer probe: how fast can any kernel *read* a decode's KV-cache bytes on this GPU, timed the way
// evaluation/bench_kernels_attention.py times decode (a CUDA graph of n back-to-back launches cycling over enough
// buffers to miss L2, median per launch)? The decode target (>= 60% of the 4.16 TB/s copy ceiling at batch 1,
// context >= 2048) is a fixed share at every size, while launch, ramp-up and drain are a fixed cost per kernel: this
// harness measures the best a plain read-and-reduce reaches at the decode sizes, and what the decode kernel's own
// launch features (thread-block clusters with a cluster barrier, programmatic dependent launch) cost on their own.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -o /tmp/read_ceiling scripts/harness_read_ceiling.cu && /tmp/read_ceiling
//
// Each block sums a contiguous share of the buffer (16-byte non-coherent loads, kUnroll in flight per thread) and
// writes one float, so nothing is optimized away. Variants: blocks per grid, threads per block, cluster size (1 or
// 8, with two cluster barriers and a distributed-shared-memory read at the end, as the decode merge does), PDL (0:
// plain launch; 1: launch_dependents + wait at the start; 2: as 1 with an L2 prefetch of the block's first 16 KB
// before the wait, as the decode kernel does). bytes = 0 times the launch chain alone. Exit status 1 on a CUDA error.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "harness_common.cuh"

namespace {

using harness::check;
using harness::kCeilingGbps;
constexpr int kUnroll = 8;

__device__ __forceinline__ float words_sum(const uint4& v) {
  return __uint_as_float(v.x & 0x3f7fffffu) + __uint_as_float(v.y & 0x3f7fffffu) +
         __uint_as_float(v.z & 0x3f7fffffu) + __uint_as_float(v.w & 0x3f7fffffu);
}

template <int kCluster, int kPdl>
__global__ void read_sum(const uint4* __restrict__ src, long long n16, float* __restrict__ out) {
  __shared__ float partial[32];
  const long long per_block = (n16 + gridDim.x - 1) / gridDim.x;
  const long long lo = blockIdx.x * per_block;
  const long long hi = min(n16, lo + per_block);
  if (kPdl >= 1) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  if (kPdl == 2) {
    for (long long i = lo + threadIdx.x * 8; i < min(hi, lo + 1024); i += blockDim.x * 8)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(src + i));
  }
  if (kPdl >= 1) asm volatile("griddepcontrol.wait;" ::: "memory");
  float acc = 0.f;
  for (long long base = lo + threadIdx.x; base < hi; base += static_cast<long long>(blockDim.x) * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const long long i = base + static_cast<long long>(u) * blockDim.x;
      v[u] = i < hi ? __ldg(src + i) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc += words_sum(v[u]);
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) acc += partial[w];
    partial[0] = acc;
  }
  if (kCluster > 1) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    if (threadIdx.x == 0) acc = *cluster.map_shared_rank(partial, (cluster.block_rank() + 1) % kCluster);
    cluster.sync();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

template <int kCluster, int kPdl>
cudaError_t launch(int blocks, int threads, const uint4* src, long long n16, float* out, cudaStream_t s) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(static_cast<unsigned>(threads));
  cfg.stream = s;
  cudaLaunchAttribute attrs[2];
  int n = 0;
  if (kCluster > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = kCluster, attrs[n].val.clusterDim.y = 1, attrs[n].val.clusterDim.z = 1;
    ++n;
  }
  if (kPdl >= 1) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attrs;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, read_sum<kCluster, kPdl>, src, n16, out);
}

using LaunchFn = cudaError_t (*)(int, int, const uint4*, long long, float*, cudaStream_t);

struct Variant {
  const char* name;
  int cluster, pdl;
  LaunchFn fn;
};

const Variant kVariants[] = {
    {"plain", 1, 0, launch<1, 0>},
    {"pdl", 1, 1, launch<1, 1>},
    {"pdl+prefetch", 1, 2, launch<1, 2>},
    {"cluster8", 8, 0, launch<8, 0>},
    {"cluster8+pdl", 8, 1, launch<8, 1>},
    {"cluster8+pdl+prefetch", 8, 2, launch<8, 2>},
};

// Median microseconds per launch: a graph of one launch per buffer (harness_common.cuh).
double time_us(const Variant& v, int blocks, int threads, const std::vector<uint4*>& bufs, long long n16, float* out,
               bool* ok) {
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  const double us = harness::graph_median_us(s, static_cast<int>(bufs.size()), [&](cudaStream_t st) {
    for (uint4* buf : bufs)
      if (!check(v.fn(blocks, threads, buf, n16, out, st), v.name)) return false;
    return true;
  }, ok);
  cudaStreamDestroy(s);
  return us;
}

}  // namespace

int main() {
  // The decode benchmark's K+V cache bytes: bs1 h25 d64 ctx2048 / 4096, bs1 h32 d128 ctx2048 / 4096, bs8 h25 ctx2048.
  const long long sizes[] = {0, 13107200, 26214400, 33554432, 67108864, 104857600};
  const int block_counts[] = {132, 200, 264, 528, 1056};
  const int thread_counts[] = {128, 256, 512};
  float* out = nullptr;
  if (!check(cudaMalloc(&out, 1 << 20), "malloc out")) return 1;
  printf("%-10s %-22s %6s %7s %9s %9s %6s\n", "MB", "variant", "blocks", "threads", "us", "GB/s", "%4.16");
  for (long long bytes : sizes) {
    const long long n16 = bytes / 16;
    const int sets = bytes == 0 ? 64 : static_cast<int>(std::max(1LL, std::min(64LL, (256LL << 20) / bytes + 1)));
    std::vector<uint4*> bufs(sets, nullptr);
    for (auto& p : bufs) {
      if (!check(cudaMalloc(&p, std::max(16LL, bytes)), "malloc src")) return 1;
      cudaMemset(p, 0x3c, std::max(16LL, bytes));
    }
    double best = 1e30;
    const char* best_name = "";
    int best_blocks = 0, best_threads = 0;
    for (const Variant& v : kVariants) {
      for (int blocks : block_counts) {
        if (blocks % v.cluster != 0) continue;
        for (int threads : thread_counts) {
          bool ok = true;
          const double us = time_us(v, blocks, threads, bufs, n16, out, &ok);
          if (!ok) return 1;
          const double gbps = bytes / (us * 1e-6) / 1e9;
          printf("%-10.1f %-22s %6d %7d %9.2f %9.1f %5.0f%%\n", bytes / 1e6, v.name, blocks, threads, us, gbps,
                 100.0 * gbps / kCeilingGbps);
          if (us < best) best = us, best_name = v.name, best_blocks = blocks, best_threads = threads;
        }
      }
    }
    printf("BEST %.1f MB: %.2f us = %.0f%% of 4.16 TB/s (%s, %d blocks x %d threads)\n", bytes / 1e6, best,
           bytes ? 100.0 * bytes / (best * 1e-6) / 1e9 / kCeilingGbps : 0.0, best_name, best_blocks, best_threads);
    for (auto p : bufs) cudaFree(p);
  }
  return check(cudaDeviceSynchronize(), "final") ? 0 : 1;
}
