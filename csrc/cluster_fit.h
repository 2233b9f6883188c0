// Which thread block cluster width a split-K kernel can launch in one wave (cluster_fit.cu). Host-only.
//
// Why: a cluster's blocks must be co-resident in one GPC, and the H200's GPCs have uneven SM counts, so a wide
// cluster leaves slots unused and fewer blocks run at once than blocks-per-SM x SMs suggests. A cluster that does
// not fit in the first wave runs in a second one and doubles the kernel's time (measured for small_linear:
// 5.3 us at 6 splits, 8.4 us at 7, k768 n2304 fp16). cudaOccupancyMaxActiveClusters gives the real count.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace eet {

constexpr int kPortableClusterWidth = 8;  // every sm_90 device launches clusters up to this size
constexpr int kMaxClusterWidth = 16;      // non-portable; H100 / H200 grant it per kernel on request

// The device's occupancy answers for one kernel (one cache per kernel instantiation, a function-local static).
struct ClusterFitCache {
  static constexpr int kDevices = 64;
  std::atomic<int> answer[kDevices][kMaxClusterWidth + 1];  // [device][width]: clusters + 2; 0: not asked yet
};

// The cluster width (1, w, 1) to launch `kernel` (blocks of `block_threads`, `smem` dynamic shared bytes) with, for
// `want` splits in `clusters` clusters: the widest w <= want of which the current device holds `clusters` at once;
// above kPortableClusterWidth only where the non-portable size is granted; 1 when none fits.
int cluster_width_that_fits(const void* kernel, unsigned block_threads, size_t smem, int want, int64_t clusters,
                            ClusterFitCache& cache);

}  // namespace eet
