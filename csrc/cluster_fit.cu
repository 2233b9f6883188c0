// Cluster widths that fit the device in one wave (design in cluster_fit.h).
#include "cluster_fit.h"

namespace eet {
namespace {

// How many clusters (1, width, 1) of `kernel` the current device holds at once; -1 when the query failed. Asked
// once per device and width: the answer is fixed by the kernel and the device.
int max_active_clusters(const void* kernel, unsigned block_threads, size_t smem, int width, ClusterFitCache& cache) {
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess) (void)cudaGetLastError(), dev = -1;
  const bool cacheable = dev >= 0 && dev < ClusterFitCache::kDevices;
  if (cacheable) {
    const int c = cache.answer[dev][width].load(std::memory_order_relaxed);
    if (c != 0) return c - 2;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(1, static_cast<unsigned>(width), 1);
  cfg.blockDim = dim3(block_threads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 1;
  attr.val.clusterDim.y = static_cast<unsigned>(width);
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) (void)cudaGetLastError(), n = -1;
  if (cacheable) cache.answer[dev][width].store(n + 2, std::memory_order_relaxed);
  return n;
}

}  // namespace

int cluster_width_that_fits(const void* kernel, unsigned block_threads, size_t smem, int want, int64_t clusters,
                            ClusterFitCache& cache) {
  if (want > kMaxClusterWidth) want = kMaxClusterWidth;
  if (want > kPortableClusterWidth &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
    want = kPortableClusterWidth;
  }
  for (int w = want; w > 1; --w) {
    const int n = max_active_clusters(kernel, block_threads, smem, w, cache);
    if (n >= clusters) return w;
    if (n < 0 && w <= kPortableClusterWidth) return w;  // no answer: a portable width launches anyway
  }
  return 1;
}

}  // namespace eet
