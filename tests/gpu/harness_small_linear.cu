// tests/gpu/sanitize.sh's harness: eet::small_linear (csrc/small_linear.cu) alone in a process with no torch, so
// compute-sanitizer sees only this kernel. Checks its output against a host fp32 dot product (exit status 1 if wrong).
//
//   nvcc -std=c++17 -O2 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -o /tmp/harness tests/gpu/harness_small_linear.cu \
//     csrc/small_linear.cu csrc/cluster_fit.cu csrc/pdl.cu
//   compute-sanitizer --tool racecheck /tmp/harness <m> <n> <k> [splits]    (splits: forced K splits, 0: the plan's)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels.h"

int main(int argc, char** argv) {
  const int64_t m = argc > 1 ? atoll(argv[1]) : 1, n = argc > 2 ? atoll(argv[2]) : 768, k = argc > 3 ? atoll(argv[3]) : 768;
  std::vector<__half> hx(m * k), hw(k * n), hb(n);
  for (int64_t i = 0; i < m * k; ++i) hx[i] = __float2half(static_cast<float>((i * 37) % 17) / 17.0f - 0.5f);
  for (int64_t i = 0; i < k * n; ++i) hw[i] = __float2half(static_cast<float>((i * 101) % 23) / 23.0f - 0.5f);
  for (int64_t i = 0; i < n; ++i) hb[i] = __float2half(static_cast<float>(i % 5) / 5.0f);
  __half *x, *w, *b, *out;
  cudaMalloc(&x, m * k * sizeof(__half));
  cudaMalloc(&w, k * n * sizeof(__half));
  cudaMalloc(&b, n * sizeof(__half));
  cudaMalloc(&out, m * n * sizeof(__half));
  cudaMemcpy(x, hx.data(), m * k * sizeof(__half), cudaMemcpyHostToDevice);
  cudaMemcpy(w, hw.data(), k * n * sizeof(__half), cudaMemcpyHostToDevice);
  cudaMemcpy(b, hb.data(), n * sizeof(__half), cudaMemcpyHostToDevice);
  cudaMemset(out, 0xff, m * n * sizeof(__half));  // NaN: an unwritten element fails
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const int64_t forced_splits = argc > 4 ? atoll(argv[4]) : 0;
  const eet::SmallLinearPlan plan = eet::small_linear_plan(eet::DType::kFloat16, m, n, k, sms, forced_splits);
  eet::SmallLinearParams p{x, w, b, out, m, n, k, k, n, eet::LinearActivation::kNone};
  cudaError_t e = eet::small_linear(eet::DType::kFloat16, p, plan, nullptr);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("m%lld n%lld k%lld splits %lld: CUDA error %s\n", (long long)m, (long long)n, (long long)k,
           (long long)plan.splits, cudaGetErrorString(e));
    return 1;
  }
  std::vector<__half> ho(m * n);
  cudaMemcpy(ho.data(), out, m * n * sizeof(__half), cudaMemcpyDeviceToHost);
  int bad = 0;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      float want = __half2float(hb[c]);
      for (int64_t i = 0; i < k; ++i) want += __half2float(hx[r * k + i]) * __half2float(hw[i * n + c]);
      const float got = __half2float(ho[r * n + c]);
      if (!(std::fabs(got - want) <= 2e-2f * (1.0f + std::fabs(want)))) ++bad;
    }
  }
  printf("m%lld n%lld k%lld tiles %lld splits %lld: %s (%d wrong)\n", (long long)m, (long long)n, (long long)k,
         (long long)plan.tiles, (long long)plan.splits, bad ? "WRONG" : "ok", bad);
  return bad ? 1 : 0;
}
