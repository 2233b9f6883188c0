// Developer probe: does compute-sanitizer racecheck handle a thread block cluster reduction over distributed shared
// memory? A standalone program (no torch, no eet code) with the pattern of small_linear's split-K merge and of the
// decode kernel's cluster merge: every block writes its partial to its own shared memory, cluster.sync(), reads
// every peer's partial in rank order through map_shared_rank, cluster.sync(). Each variant checks its result on
// the host, so a variant that "passes" under the tool also computed the right sums.
//
//   nvcc -O2 -arch=sm_90 -o /tmp/repro scripts/repro_cluster_racecheck.cu
//   compute-sanitizer --tool racecheck /tmp/repro <variant> <cluster width>
//
// Variants: "static" (256 threads, 32 KB static shared buffer + the partials, like small_linear),
// "static-small" (256 threads, partials only), "dynamic" (128 threads, 80 KB dynamic shared memory, like decode),
// "static-128" (128 threads, 32 KB static). Exit status 0 iff the sums are right.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace cg = cooperative_groups;

constexpr int kOuts = 512;  // partial elements per block (small_linear: kRows x tile columns)

template <int kThreads, int kStaticFloats>
__global__ void cluster_sum(const float* __restrict__ in, float* __restrict__ out, int use_dynamic) {
  __shared__ float stage[kStaticFloats > 0 ? kStaticFloats : 1];
  __shared__ float part[kOuts];
  extern __shared__ float dyn[];
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const unsigned splits = cluster.num_blocks();
  const int tid = threadIdx.x;
  float* scratch = use_dynamic ? dyn : stage;
  // Some shared-memory traffic inside the block first, ordered by a block barrier, as in the real kernels.
  for (int i = tid; i < kOuts; i += kThreads) scratch[i] = in[(blockIdx.x * splits + rank) * kOuts + i];
  __syncthreads();
  for (int i = tid; i < kOuts; i += kThreads) part[i] = 2.0f * scratch[(i + 1) % kOuts];
  cluster.sync();
  const int per = (kOuts + splits - 1) / splits;
  const int first = rank * per;
  const int last = first + per < kOuts ? first + per : kOuts;
  for (int i = first + tid; i < last; i += kThreads) {
    float s = 0.0f;
    for (unsigned r = 0; r < splits; ++r) s += cluster.map_shared_rank(part, r)[i];
    out[blockIdx.x * kOuts + i] = s;
  }
  cluster.sync();
}

template <int kThreads, int kStaticFloats>
cudaError_t launch(int width, int clusters, size_t dyn_smem, const float* in, float* out) {
  auto kernel = cluster_sum<kThreads, kStaticFloats>;
  if (dyn_smem > 0) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn_smem));
    if (e != cudaSuccess) return e;
  }
  if (width > 8) cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(clusters, width, 1);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = dyn_smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = width;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // grid x = cluster index, grid y = rank: blockIdx.x names the cluster (in is indexed [cluster][rank][i]).
  return cudaLaunchKernelEx(&cfg, kernel, in, out, dyn_smem > 0 ? 1 : 0);
}

int main(int argc, char** argv) {
  const char* variant = argc > 1 ? argv[1] : "static";
  const int width = argc > 2 ? atoi(argv[2]) : 8;
  const int clusters = 4;
  std::vector<float> h_in(static_cast<size_t>(clusters) * width * kOuts);
  for (size_t i = 0; i < h_in.size(); ++i) h_in[i] = static_cast<float>((i * 7919) % 1000) / 100.0f;
  float *in = nullptr, *out = nullptr;
  cudaMalloc(&in, h_in.size() * sizeof(float));
  cudaMalloc(&out, static_cast<size_t>(clusters) * kOuts * sizeof(float));
  cudaMemcpy(in, h_in.data(), h_in.size() * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemset(out, 0xff, static_cast<size_t>(clusters) * kOuts * sizeof(float));  // NaN: unwritten fails
  cudaError_t e;
  if (!strcmp(variant, "static")) e = launch<256, 8192>(width, clusters, 0, in, out);
  else if (!strcmp(variant, "static-small")) e = launch<256, 0>(width, clusters, 0, in, out);
  else if (!strcmp(variant, "static-128")) e = launch<128, 8192>(width, clusters, 0, in, out);
  else if (!strcmp(variant, "dynamic")) e = launch<128, 0>(width, clusters, 80 << 10, in, out);
  else {
    fprintf(stderr, "unknown variant %s\n", variant);
    return 2;
  }
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("%s width %d: CUDA error %s\n", variant, width, cudaGetErrorString(e));
    return 1;
  }
  std::vector<float> h_out(static_cast<size_t>(clusters) * kOuts);
  cudaMemcpy(h_out.data(), out, h_out.size() * sizeof(float), cudaMemcpyDeviceToHost);
  int bad = 0;
  for (int c = 0; c < clusters; ++c) {
    for (int i = 0; i < kOuts; ++i) {
      float want = 0.0f;
      for (int r = 0; r < width; ++r) want += 2.0f * h_in[(static_cast<size_t>(c) * width + r) * kOuts + (i + 1) % kOuts];
      const float got = h_out[static_cast<size_t>(c) * kOuts + i];
      if (!(got == got) || (got - want > 1e-3f * (1 + want)) || (want - got > 1e-3f * (1 + want))) ++bad;
    }
  }
  printf("%s width %d: %s (%d wrong of %d)\n", variant, width, bad ? "WRONG" : "ok", bad, clusters * kOuts);
  return bad ? 1 : 0;
}
