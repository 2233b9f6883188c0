// Shared by the standalone developer harnesses (scripts/harness_*.cu): CUDA error reporting and the decode bench's
// timing discipline (evaluation/bench_kernels_attention.py): launches captured once into a CUDA graph, the graph
// replayed, the median replay divided by the launches it holds.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace harness {

constexpr double kCeilingGbps = 4160.0;  // the H200's large-copy ceiling (BASELINES.md)

inline bool check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  printf("%s: CUDA error %s\n", what, cudaGetErrorString(e));
  return false;
}

// Fills x[0..n) with deterministic pseudo-random values spread over [lo, hi) in steps of (hi - lo) / 20000.
__global__ void fill_uniform(__half* x, long long n, unsigned seed, float lo, float hi) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2half(lo + (hi - lo) * static_cast<float>(h % 20000u) / 20000.0f);
  }
}

// Median microseconds per launch of `launches` launches that enqueue(s) issues on stream s: captured into a graph,
// replayed 28 times, the first 3 replays dropped. *ok turns false on any CUDA error (the result is then 0).
template <typename Enqueue>
double graph_median_us(cudaStream_t s, int launches, Enqueue enqueue, bool* ok) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  *ok = check(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), "capture");
  *ok = *ok && enqueue(s);
  *ok = check(cudaStreamEndCapture(s, &graph), "end capture") && *ok;
  *ok = *ok && check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  for (int rep = 0; *ok && rep < 28; ++rep) {
    cudaEventRecord(a, s);
    cudaGraphLaunch(exec, s);
    cudaEventRecord(b, s);
    *ok = check(cudaEventSynchronize(b), "replay");
    float t = 0.f;
    cudaEventElapsedTime(&t, a, b);
    if (rep >= 3) ms.push_back(t);
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (!*ok || ms.empty()) return 0.0;
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2] * 1e3 / static_cast<double>(launches);
}

}  // namespace harness
