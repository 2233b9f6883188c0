// Developer probe: what each part of the decode kernel's load side costs, on a read that has no arithmetic.
//
// scripts/harness_read_ceiling.cu found the best plain read of a batch-1 decode's K+V bytes at 70 / 85 / 89% of the
// 4.16 TB/s copy ceiling (13.1 / 26.2 / 33.6 MB), while the tensor-core decode kernel built with its loads alone
// (-DEET_DECODE_MMA_LOAD_ONLY) reaches 45 / 60 / 62%. This harness walks from one to the other on kernels shaped like
// the decode kernel: blocks of 4 warps, two per SM (80 KB of dynamic shared memory each), every warp streaming its
// own 4 KB steps (warp w takes steps w, w + 4, ... of its block's contiguous share) through a 5-stage pipeline, and
// adds one feature at a time:
//   path     ldg: 16-byte register loads, 4 steps in flight per warp (no shared memory traffic);
//            cpasync: 16-byte cp.async copies, 8 per lane per step (the decode kernel's path);
//            bulk: one 4 KB cp.async.bulk per step, completion on an mbarrier (the TMA engine, no per-lane copies);
//            bulkrows: 32 bulk copies of 128 bytes per step, one per lane (per-row copies, as a strided cache needs);
//   bounds   the share computed from a length read from global memory first (the decode kernel reads each
//            sequence's bounds before its first copy);
//   cluster  8 (264 blocks) or 10 (250 blocks, h25's planned split) blocks per thread block cluster, with the decode
//            merge's two cluster barriers and a distributed-shared-memory read at the end, under each cluster
//            scheduling policy (0 default, 1 spread, 2 load balancing);
//   ticket   (kCluster < 0) no cluster: groups of -kCluster consecutive blocks merged through global memory as a
//            cluster-free decode would: every block stores a 64-float partial, fences, takes an atomic ticket, and
//            the group's last block reads the group's partials back from L2 and stores their sum (the cheapest
//            merge across SMs without clusters, the bound of that design).
//   combine  (kCluster == 0) no cluster, no merge in the read: every block stores its 64-float partial and a second,
//            programmatic dependent kernel (one block of 64 threads per group of 8 or 10 blocks) waits for the read
//            and stores each group's sum, as the decode's combine path (attention_decode_combine.cu) does: the bound
//            of a two-kernel design.
// The merges are in harness_read_merges.cuh; the ticket and combine sums are checked against the block sums on the
// host.
// Every launch is a programmatic dependent launch, timed as the decode bench times (harness_common.cuh: a CUDA graph
// of one launch per buffer, enough buffers to miss L2, median per launch). Each kernel's sum is checked against the
// plain read's once per size: exit status 1 on a mismatch or a CUDA error.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -o /tmp/read_paths scripts/harness_read_paths.cu
//   /tmp/read_paths paths    # every path, bounds on / off, clusters of 8 / 10 under each policy
//   /tmp/read_paths          # ldg and cp.async over block counts and cluster sizes that fit in one wave
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "harness_common.cuh"
#include "harness_read_merges.cuh"

namespace {

using harness::check;
using harness::kCeilingGbps;

constexpr int kWarps = 4, kThreads = kWarps * 32, kStages = 5;
constexpr int kStepBytes = 4096, kStep16 = kStepBytes / 16, kPerLane = kStep16 / 32;  // 8 x 16 bytes per lane
constexpr int kSmemBytes = kWarps * kStages * kStepBytes;                              // 80 KB: two blocks per SM
using read_merges::kPartial;
enum Path { kLdg, kCpAsync, kBulk, kBulkRows };

__device__ __forceinline__ uint32_t saddr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ float word(const uint4& v) {
  return __uint_as_float(v.x & 0x3f7fffffu) + __uint_as_float(v.w & 0x3f7fffffu);
}
__device__ __forceinline__ void mbar_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(saddr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(saddr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   saddr(dst)),
               "l"(src), "r"(bytes), "r"(saddr(bar))
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(saddr(bar)), "r"(parity)
        : "memory");
  }
}

template <int kPath, bool kBounds, int kCluster>
__global__ void __launch_bounds__(kThreads) stream_read(const uint4* __restrict__ src, long long n16,
                                                        const int* __restrict__ len16, float* __restrict__ out) {
  extern __shared__ uint4 smem[];
  __shared__ uint64_t bars[kWarps * kStages];
  __shared__ float partial[kWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  const long long total = kBounds ? min(n16, static_cast<long long>(__ldg(len16))) : n16;
  const long long steps = total / kStep16;  // sizes are whole steps (checked on the host)
  const long long per_block = (steps + gridDim.x - 1) / gridDim.x;
  const long long s_lo = blockIdx.x * per_block, s_hi = min(steps, s_lo + per_block);
  const int mine = s_hi > s_lo + warp ? static_cast<int>((s_hi - s_lo - warp + kWarps - 1) / kWarps) : 0;
  auto step_src = [&](int r) { return src + (s_lo + warp + static_cast<long long>(r) * kWarps) * kStep16; };
  uint4* const pipe = smem + warp * kStages * kStep16;
  uint64_t* const bar = bars + warp * kStages;
  float acc = 0.f;

  if constexpr (kPath == kLdg) {
    for (int r0 = 0; r0 < mine; r0 += kStages - 1) {
      uint4 v[kStages - 1][kPerLane];
#pragma unroll
      for (int u = 0; u < kStages - 1; ++u)
#pragma unroll
        for (int e = 0; e < kPerLane; ++e)
          v[u][e] = r0 + u < mine ? __ldg(step_src(r0 + u) + e * 32 + lane) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
      for (int u = 0; u < kStages - 1; ++u)
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) acc += word(v[u][e]);
    }
  } else if constexpr (kPath == kCpAsync) {
    auto issue = [&](int r) {
      if (r < mine) {
        uint4* dst = pipe + (r % kStages) * kStep16;
        const uint4* s = step_src(r);
#pragma unroll
        for (int e = 0; e < kPerLane; ++e)
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(saddr(dst + e * 32 + lane)),
                       "l"(s + e * 32 + lane)
                       : "memory");
      }
      asm volatile("cp.async.commit_group;\n" ::: "memory");
    };
#pragma unroll
    for (int r = 0; r < kStages - 1; ++r) issue(r);
    for (int r = 0; r < mine; ++r) {
      __syncwarp();
      issue(r + kStages - 1);
      asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 1) : "memory");
      __syncwarp();
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc += word(pipe[(r % kStages) * kStep16 + e * 32 + lane]);
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  } else {
    if (lane == 0) {
      for (int s = 0; s < kStages; ++s) mbar_init(bar + s);
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncwarp();
    auto issue = [&](int r) {
      if (r >= mine) return;
      uint4* dst = pipe + (r % kStages) * kStep16;
      uint64_t* b = bar + r % kStages;
      if constexpr (kPath == kBulk) {
        if (lane == 0) {
          mbar_expect(b, kStepBytes);
          bulk_copy(dst, step_src(r), kStepBytes, b);
        }
      } else {
        if (lane == 0) mbar_expect(b, kStepBytes);
        __syncwarp();
        bulk_copy(dst + lane * kPerLane, step_src(r) + lane * kPerLane, kStepBytes / 32, b);
      }
    };
#pragma unroll
    for (int r = 0; r < kStages - 1; ++r) issue(r);
    for (int r = 0; r < mine; ++r) {
      // Every lane's reads of the stage refilled now (round r - 1's) are done before the async proxy overwrites it.
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncwarp();
      issue(r + kStages - 1);
      mbar_wait(bar + r % kStages, static_cast<uint32_t>((r / kStages) & 1));
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc += word(pipe[(r % kStages) * kStep16 + e * 32 + lane]);
    }
  }

  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) acc += partial[w];
    partial[0] = acc;
  }
  read_merges::block_merge<kCluster>(partial, out);
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

struct Variant {
  const char* name;
  int path, bounds, cluster;
  const void* fn;
  int group;  // blocks per merged group: ticket (cluster < 0) and combine (cluster == 0) paths; 0 otherwise
};

template <int kPath, bool kBounds, int kCluster>
Variant variant(const char* name) {
  return {name, kPath, kBounds ? 1 : 0, kCluster, reinterpret_cast<const void*>(stream_read<kPath, kBounds, kCluster>),
          kCluster < 0 ? -kCluster : 0};
}

template <int kPath, bool kBounds>
Variant combine_variant(const char* name, int group) {
  return {name, kPath, kBounds ? 1 : 0, 0, reinterpret_cast<const void*>(stream_read<kPath, kBounds, 0>), group};
}

cudaError_t launch(const Variant& v, int blocks, int policy, const uint4* src, long long n16, const int* len16,
                   float* out, cudaStream_t s) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = kSmemBytes;
  cfg.stream = s;
  cudaLaunchAttribute attrs[3];
  int n = 0;
  attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[n].val.programmaticStreamSerializationAllowed = 1;
  ++n;
  if (v.cluster > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = static_cast<unsigned>(v.cluster), attrs[n].val.clusterDim.y = 1;
    attrs[n].val.clusterDim.z = 1;
    ++n;
    attrs[n].id = cudaLaunchAttributeClusterSchedulingPolicyPreference;
    attrs[n].val.clusterSchedulingPolicyPreference = static_cast<cudaClusterSchedulingPolicy>(policy);
    ++n;
  }
  cfg.attrs = attrs;
  cfg.numAttrs = n;
  void* args[] = {&src, &n16, &len16, &out};
  cudaError_t err = cudaLaunchKernelExC(&cfg, v.fn, args);
  if (err != cudaSuccess || v.cluster != 0) return err;
  // The combine path: its second kernel, a programmatic dependent launch behind the read (as the decode's).
  cudaLaunchConfig_t cc = {};
  cc.gridDim = dim3(static_cast<unsigned>(blocks / v.group));
  cc.blockDim = dim3(kPartial);
  cc.stream = s;
  cc.attrs = attrs;
  cc.numAttrs = 1;  // the programmatic serialization attribute alone
  return cudaLaunchKernelEx(&cc, read_merges::combine_groups, out, v.group);
}

}  // namespace

int main(int argc, char** argv) {
  // Two runs (logs/2026-12-04b). "paths" (call 2): every load path with and without the bounds read, and clusters of
  // 8 (264 blocks) or 10 (250) under each scheduling policy; bulk copies lost to cp.async at every size there, reading
  // a length first cost nothing, and 33 clusters of 8 turned out to be more than the GPU holds at once. The default
  // (call 3): ldg and cp.async over block counts 200-264 and clusters of 2-8, printing how many clusters the GPU holds
  // at once (more than that run in a second wave). Since 2026-12-04 (fourth session) also the ticket merge in groups of
  // 8 and 10 blocks, and since 2026-12-04 (fifth session) the combine path's two kernels in groups of 8 and 10.
  const bool paths_run = argc > 1 && std::strcmp(argv[1], "paths") == 0;
  std::vector<Variant> variants;
  std::vector<int> block_counts;
  int policies = 1;
  if (paths_run) {
    variants = {
        variant<kLdg, false, 1>("ldg"),
        variant<kCpAsync, false, 1>("cpasync"),
        variant<kBulk, false, 1>("bulk"),
        variant<kBulkRows, false, 1>("bulkrows"),
        variant<kLdg, true, 1>("ldg+bounds"),
        variant<kCpAsync, true, 1>("cpasync+bounds"),
        variant<kBulk, true, 1>("bulk+bounds"),
        variant<kBulkRows, true, 1>("bulkrows+bounds"),
        variant<kLdg, true, 8>("ldg+bounds+c8"),
        variant<kCpAsync, true, 8>("cpasync+bounds+c8"),
        variant<kBulk, true, 8>("bulk+bounds+c8"),
        variant<kBulkRows, true, 8>("bulkrows+bounds+c8"),
        variant<kCpAsync, true, 10>("cpasync+bounds+c10"),
        variant<kBulk, true, 10>("bulk+bounds+c10"),
        variant<kBulkRows, true, 10>("bulkrows+bounds+c10"),
    };
    block_counts = {264, 250};  // a variant runs at the counts its cluster size divides
    policies = 3;
  } else {
    variants = {
        variant<kLdg, true, 1>("ldg"),         variant<kCpAsync, true, 1>("cpasync"),
        variant<kLdg, true, 2>("ldg+c2"),      variant<kCpAsync, true, 2>("cpasync+c2"),
        variant<kLdg, true, 4>("ldg+c4"),      variant<kCpAsync, true, 4>("cpasync+c4"),
        variant<kLdg, true, 5>("ldg+c5"),      variant<kCpAsync, true, 5>("cpasync+c5"),
        variant<kLdg, true, 8>("ldg+c8"),      variant<kCpAsync, true, 8>("cpasync+c8"),
        variant<kBulk, true, 1>("bulk"),
        variant<kLdg, true, -8>("ldg+t8"),     variant<kCpAsync, true, -8>("cpasync+t8"),
        variant<kLdg, true, -10>("ldg+t10"),
        combine_variant<kLdg, true>("ldg+k8", 8),
        combine_variant<kLdg, true>("ldg+k10", 10),
    };
    block_counts = {200, 224, 240, 250, 256, 264};
  }
  for (const Variant& v : variants) {
    if (!check(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes), v.name)) return 1;
    if (v.cluster > 8 &&
        !check(cudaFuncSetAttribute(v.fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1), v.name))
      return 1;
    if (v.cluster > 1) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(264 / v.cluster * v.cluster);
      cfg.blockDim = dim3(kThreads);
      cfg.dynamicSmemBytes = kSmemBytes;
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = static_cast<unsigned>(v.cluster), attr.val.clusterDim.y = 1, attr.val.clusterDim.z = 1;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      int clusters = 0;
      if (!check(cudaOccupancyMaxActiveClusters(&clusters, v.fn, &cfg), v.name)) return 1;
      printf("FIT %s: %d clusters of %d at once (%d blocks)\n", v.name, clusters, v.cluster, clusters * v.cluster);
    }
  }
  const long long sizes[] = {13107200, 26214400, 33554432};
  float* out = nullptr;
  int* len16 = nullptr;
  if (!check(cudaMalloc(&out, 1 << 20), "malloc out") || !check(cudaMalloc(&len16, sizeof(int)), "malloc len"))
    return 1;
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  printf("%-8s %-22s %6s %6s %9s %9s %6s\n", "MB", "variant", "blocks", "policy", "us", "GB/s", "%4.16");
  for (long long bytes : sizes) {
    const long long n16 = bytes / 16;
    if (n16 % kStep16 != 0) return 1;
    const int n16_int = static_cast<int>(n16);
    cudaMemcpy(len16, &n16_int, sizeof(int), cudaMemcpyHostToDevice);
    const int sets = static_cast<int>(std::max(1LL, std::min(64LL, (256LL << 20) / bytes + 1)));
    std::vector<uint4*> bufs(sets, nullptr);
    for (auto& p : bufs) {
      if (!check(cudaMalloc(&p, bytes), "malloc src")) return 1;
      harness::fill_uniform<<<1024, 256>>>(reinterpret_cast<__half*>(p), bytes / 2, 7u, 0.5f, 1.5f);
    }
    if (!check(cudaDeviceSynchronize(), "fill")) return 1;
    // The reference sum: the plain read over 264 blocks, summed on the host in block order.
    std::vector<float> host(264);
    auto total_of = [&](const Variant& v, int blocks, int policy, double* sum) {
      if (!check(cudaMemset(out, 0, 1 << 20), "memset") ||
          !check(launch(v, blocks, policy, bufs[0], n16, len16, out, s), v.name) ||
          !check(cudaStreamSynchronize(s), v.name))
        return false;
      host.resize(blocks);
      cudaMemcpy(host.data(), out, blocks * sizeof(float), cudaMemcpyDeviceToHost);
      *sum = 0.0;
      for (float f : host) *sum += f;
      return true;
    };
    double ref = 0.0;
    if (!total_of(variants[0], 264, 0, &ref)) return 1;
    for (const Variant& v : variants) {
      for (int blocks : block_counts) {
        if (blocks % (v.group > 0 ? v.group : v.cluster) != 0) continue;  // whole clusters / groups only
        for (int policy = 0; policy < (v.cluster > 1 ? policies : 1); ++policy) {
          double sum = 0.0;
          if (!total_of(v, blocks, policy, &sum)) return 1;
          // Different block counts partition the same words differently: only float rounding may differ.
          if (std::fabs(sum - ref) > 1e-3 * std::fabs(ref)) {
            printf("MISMATCH %s: sum %.6e, plain read %.6e\n", v.name, sum, ref);
            return 1;
          }
          if (v.group > 0 && (!check(cudaStreamSynchronize(s), v.name) ||
                              !read_merges::group_sums_ok(v.name, out, host, v.group)))
            return 1;
          bool ok = true;
          const double us = harness::graph_median_us(s, sets, [&](cudaStream_t st) {
            for (uint4* buf : bufs)
              if (!check(launch(v, blocks, policy, buf, n16, len16, out, st), v.name)) return false;
            return true;
          }, &ok);
          if (!ok) return 1;
          const double gbps = bytes / (us * 1e-6) / 1e9;
          printf("%-8.1f %-22s %6d %6d %9.2f %9.1f %5.0f%%\n", bytes / 1e6, v.name, blocks, policy, us, gbps,
                 100.0 * gbps / kCeilingGbps);
        }
      }
    }
    for (auto p : bufs) cudaFree(p);
  }
  return check(cudaDeviceSynchronize(), "final") ? 0 : 1;
}
