// The merges across SMs that scripts/harness_read_paths.cu puts behind its decode-shaped reads: what a batch-1
// decode pays to combine its splits, measured on reads that do no arithmetic. Selected by the read kernel's
// kCluster (see that file's header): > 1 a thread block cluster (two cluster barriers and a distributed-shared-memory
// read), < 0 an atomic-ticket merge of -kCluster consecutive blocks through global memory, 0 a second kernel
// (combine_groups, launched as a programmatic dependent) that merges the blocks' stored partials; 1 no merge.
// Header-only, for that harness.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

namespace read_merges {

constexpr int kPartial = 64;  // floats per block partial (one head_dim-64 query vector), ticket and combine paths
constexpr int kMaxBlocks = 264;
constexpr int kPartialsAt = 4096, kSumsAt = kPartialsAt + kMaxBlocks * kPartial;  // float offsets in `out`
__device__ unsigned g_tickets[kMaxBlocks];  // per ticket group; its last block resets it for the next launch

// The block's merge, after its block sum is in block_sum[0] (shared memory, written by thread 0; every thread
// calls this). Cluster: exchanges one float with a peer (kept in out[gridDim.x + block], so the read is not
// optimized away). Ticket and combine: the block stores its partial, element t = block sum + t, at
// out[kPartialsAt + block * kPartial]; a ticket group's last block stores the group's sum at out[kSumsAt + group *
// kPartial] (combine: combine_groups does, in the next kernel).
template <int kCluster>
__device__ __forceinline__ void block_merge(float* block_sum, float* __restrict__ out) {
  if constexpr (kCluster > 1) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    float peer = 0.f;
    if (threadIdx.x == 0) peer = *cluster.map_shared_rank(block_sum, (cluster.block_rank() + 1) % kCluster);
    cluster.sync();
    if (threadIdx.x == 0) out[gridDim.x + blockIdx.x] = peer;
  }
  if constexpr (kCluster <= 0) {
    __syncthreads();  // thread 0's block sum in block_sum[0]
    if (threadIdx.x < kPartial) {
      out[kPartialsAt + blockIdx.x * kPartial + threadIdx.x] = block_sum[0] + threadIdx.x;
      if constexpr (kCluster < 0) __threadfence();  // the partial is visible GPU-wide before the ticket is taken
    }
  }
  if constexpr (kCluster < 0) {
    constexpr int kGroup = -kCluster;
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&g_tickets[blockIdx.x / kGroup], 1u) == kGroup - 1;
    __syncthreads();
    if (last && threadIdx.x < kPartial) {
      __threadfence();
      const int g0 = blockIdx.x / kGroup * kGroup;
      float sum = 0.f;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) sum += __ldcg(out + kPartialsAt + (g0 + g) * kPartial + threadIdx.x);
      out[kSumsAt + g0 / kGroup * kPartial + threadIdx.x] = sum;
      if (threadIdx.x == 0) g_tickets[blockIdx.x / kGroup] = 0u;
    }
  }
}

// The combine path's second kernel: block g sums the partials of read blocks g * group .. + group - 1 (kPartial
// threads).
__global__ void __launch_bounds__(kPartial) combine_groups(float* __restrict__ out, int group) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the read's partials are complete and visible
  const int g0 = blockIdx.x * group;
  float sum = 0.f;
  for (int g = 0; g < group; ++g) sum += out[kPartialsAt + (g0 + g) * kPartial + threadIdx.x];
  out[kSumsAt + blockIdx.x * kPartial + threadIdx.x] = sum;
}

// Host check of the merged groups (after a launch of the ticket or combine path has finished): element t of group g's
// sum must be the sum of its blocks' sums (block_sums, as the read stored them) plus group * t.
inline bool group_sums_ok(const char* name, const float* out, const std::vector<float>& block_sums, int group) {
  const int groups = static_cast<int>(block_sums.size()) / group;
  std::vector<float> sums(static_cast<size_t>(groups) * kPartial);
  if (cudaMemcpy(sums.data(), out + kSumsAt, sums.size() * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess)
    return false;
  for (int g = 0; g < groups; ++g) {
    double want = 0.0;
    for (int i = 0; i < group; ++i) want += block_sums[g * group + i];
    for (int t = 0; t < kPartial; ++t) {
      const double w = want + static_cast<double>(group) * t, got = sums[g * kPartial + t];
      if (std::fabs(got - w) > 1e-4 * std::fabs(w) + 1e-3) {
        printf("MISMATCH %s: group %d element %d: %.6e, blocks' sums %.6e\n", name, g, t, got, w);
        return false;
      }
    }
  }
  return true;
}

}  // namespace read_merges
