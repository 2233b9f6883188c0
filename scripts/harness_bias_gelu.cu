// Developer probe: eet::bias_gelu (csrc/activation.cu) alone, no torch, to time block shapes that the kernel fixes
// at compile time. Build one binary per shape and compare:
//
//   for r in 1 2 4 8; do nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -DEET_GELU_ROWS_PER_THREAD=$r \
//     -o /tmp/gelu_r$r scripts/harness_bias_gelu.cu csrc/activation.cu && /tmp/gelu_r$r r$r; done
//
// Per (shape, form): fp16 activations of `rows x cols` with a bias, several input sets cycled so that the reads come
// from HBM (over 2x the 60 MB L2), out-of-place; CUDA-event time of 10 calls, median of 25, as GB/s of the bytes the
// op must move (x read, out written) and the share of the H200's 4.16 TB/s copy ceiling. Exit status 1 on a CUDA
// error or a non-finite output.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "harness_common.cuh"
#include "kernels.h"

namespace {

using harness::check;
using harness::kCeilingGbps;

bool time_case(const char* tag, long long rows, long long cols, eet::GeluKind kind, const char* form) {
  const long long n = rows * cols;
  const long long sets = std::max(2LL, (2LL * 60 * 1024 * 1024) / (n * 2) + 1);
  std::vector<__half*> xs(sets), outs(sets);
  __half* bias = nullptr;
  bool ok = check(cudaMalloc(&bias, cols * sizeof(__half)), "malloc bias");
  for (long long s = 0; ok && s < sets; ++s) {
    ok = check(cudaMalloc(&xs[s], n * sizeof(__half)), "malloc x") &&
         check(cudaMalloc(&outs[s], n * sizeof(__half)), "malloc out");
    if (ok) harness::fill_uniform<<<1024, 256>>>(xs[s], n, static_cast<unsigned>(s + 1), -6.f, 6.f);  // both tails
  }
  if (ok) harness::fill_uniform<<<64, 256>>>(bias, cols, 99u, -6.f, 6.f);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int rep = 0; ok && rep < 28; ++rep) {
    cudaEventRecord(start);
    for (int c = 0; c < 10; ++c) {
      const long long s = (rep * 10 + c) % sets;
      ok = ok && check(eet::bias_gelu(eet::DType::kFloat16, xs[s], bias, outs[s], rows, cols, kind, nullptr), "launch");
    }
    cudaEventRecord(stop);
    ok = ok && check(cudaEventSynchronize(stop), "run");
    float t = 0.f;
    cudaEventElapsedTime(&t, start, stop);
    if (rep >= 3) ms.push_back(t / 10.0f);  // the first repetitions warm up
  }
  if (ok) {
    std::vector<__half> host(std::min(n, 1LL << 20));
    ok = check(cudaMemcpy(host.data(), outs[0], host.size() * sizeof(__half), cudaMemcpyDeviceToHost), "copy");
    for (const __half& v : host) ok = ok && std::isfinite(__half2float(v));
    if (!ok) printf("%s: non-finite output\n", tag);
  }
  if (ok) {
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double gbps = 2.0 * n * 2 / (med * 1e-3) / 1e9;
    printf("%-6s bias_gelu_%s/rows%lld/cols%lld/fp16  %.4f ms  %7.1f GB/s  %3.0f%%\n", tag, form, rows, cols, med, gbps,
           100.0 * gbps / kCeilingGbps);
  }
  for (long long s = 0; s < sets; ++s) cudaFree(xs[s]), cudaFree(outs[s]);
  cudaFree(bias);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const char* tag = argc > 1 ? argv[1] : "";
  const long long shapes[][2] = {{8192, 3072}, {8192, 4096}, {4096, 6400}, {4096, 16384}};
  bool ok = true;
  for (const auto& s : shapes) {
    ok = time_case(tag, s[0], s[1], eet::GeluKind::kErf, "none") && ok;
    ok = time_case(tag, s[0], s[1], eet::GeluKind::kTanh, "tanh") && ok;
  }
  return ok ? 0 : 1;
}
