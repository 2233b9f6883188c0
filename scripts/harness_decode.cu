// Developer probe: eet's decode attention (csrc/attention_decode*.cu) alone, no torch, to time block shapes the
// tensor-core kernel fixes at compile time (keys per warp step, pipeline stages). Build one binary per shape:
//
//   nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -DEET_DECODE_MMA_KEYS_D64=32 \
//     -DEET_DECODE_MMA_STAGES_D64=3 -o /tmp/decode_k32s3 scripts/harness_decode.cu csrc/attention_decode.cu \
//     csrc/attention_decode_split.cu csrc/attention_decode_mma.cu csrc/attention_decode_mma_regs.cu \
//     csrc/attention_decode_combine.cu csrc/cluster_fit.cu csrc/pdl.cu && /tmp/decode_k32s3 k32s3
//
// Per shape (batch 1 and 8, the decode rows of kernels-h200, and two short contexts): fp16 K / V caches with fresh values, enough copies
// cycled to read from HBM (over the 60 MB L2), one query row; timed as evaluation/bench_kernels_attention.py times
// decode (a CUDA graph of one launch per copy, median of event-timed replays, per launch), at the planner's split
// and at every forced cluster split 1..16 (EET_HF_DECODE_SPLITS). Before timing, the output is poisoned and
// compared with a naive fp32 kernel on the same inputs (max abs error <= 2e-3): exit status 1 on a mismatch, an
// unwritten element or a CUDA error.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "attention_kernels.h"
#include "harness_common.cuh"
#include "kernels.h"

namespace {

using harness::check;
using harness::kCeilingGbps;

// One block per (batch, head): scores in shared memory, fp32 throughout. q [B, H, 1, D], k / v [B, H, L, D],
// out [B, 1, H, D]; every key visible.
__global__ void reference(const __half* q, const __half* k, const __half* v, float* out, int heads, int len, int d,
                          float scale) {
  extern __shared__ float sc[];
  const int bh = blockIdx.x;
  const __half* qp = q + static_cast<long long>(bh) * d;
  const __half* kp = k + static_cast<long long>(bh) * len * d;
  const __half* vp = v + static_cast<long long>(bh) * len * d;
  for (int j = threadIdx.x; j < len; j += blockDim.x) {
    float s = 0.f;
    for (int e = 0; e < d; ++e) s += __half2float(qp[e]) * __half2float(kp[static_cast<long long>(j) * d + e]);
    sc[j] = s * scale;
  }
  __syncthreads();
  __shared__ float mx, sum;
  if (threadIdx.x == 0) {
    mx = -INFINITY;
    for (int j = 0; j < len; ++j) mx = fmaxf(mx, sc[j]);
    sum = 0.f;
    for (int j = 0; j < len; ++j) sum += expf(sc[j] - mx);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float a = 0.f;
    for (int j = 0; j < len; ++j) a += expf(sc[j] - mx) * __half2float(vp[static_cast<long long>(j) * d + e]);
    out[static_cast<long long>(bh) * d + e] = a / sum;
  }
}

struct Shape {
  int batch, heads, d, ctx;
};

double time_us(eet::AttentionParams p, const std::vector<__half*>& ks, const std::vector<__half*>& vs,
               const std::vector<__half*>& qs, int sms, cudaStream_t s, bool* ok) {
  return harness::graph_median_us(s, static_cast<int>(ks.size()), [&](cudaStream_t st) {
    for (size_t i = 0; i < ks.size(); ++i) {
      p.k = ks[i], p.v = vs[i], p.q = qs[i];
      if (!check(eet::attn::launch_decode(eet::DType::kFloat16, p, true, sms, st), "launch")) return false;
    }
    return true;
  }, ok);
}

// Poison out, run once on copy 0, compare with the reference. Returns the max abs error (inf: unwritten / NaN).
double check_once(eet::AttentionParams p, const Shape& sh, __half* q, __half* k, __half* v, float* ref, int sms,
                  cudaStream_t s) {
  const long long n = static_cast<long long>(sh.batch) * sh.heads * sh.d;
  p.q = q, p.k = k, p.v = v;
  cudaMemsetAsync(p.out, 0xff, n * sizeof(__half), s);  // 0xffff: NaN in fp16
  if (!check(eet::attn::launch_decode(eet::DType::kFloat16, p, true, sms, s), "check launch")) return INFINITY;
  std::vector<__half> got(n);
  std::vector<float> want(n);
  cudaMemcpyAsync(got.data(), p.out, n * sizeof(__half), cudaMemcpyDeviceToHost, s);
  cudaMemcpyAsync(want.data(), ref, n * sizeof(float), cudaMemcpyDeviceToHost, s);
  if (!check(cudaStreamSynchronize(s), "check sync")) return INFINITY;
  double err = 0.0;
  for (long long i = 0; i < n; ++i) {
    const double g = __half2float(got[i]);
    if (!std::isfinite(g)) return INFINITY;
    err = std::max(err, std::fabs(g - want[i]));
  }
  return err;
}

}  // namespace

int main(int argc, char** argv) {
  const char* tag = argc > 1 ? argv[1] : "default";
  // EET_HARNESS_NO_CHECK=1 times a build whose output is wrong on purpose (-DEET_DECODE_MMA_LOAD_ONLY: loads only).
  const bool no_check = std::getenv("EET_HARNESS_NO_CHECK") != nullptr;
  // The kernel bench's batch-1 rows, then short contexts at the same heads: with a few KB per block, their times are
  // the fixed cost per launch (the intercept of time against bytes) that bounds batch 1.
  const Shape shapes[] = {{1, 25, 64, 2048}, {1, 25, 64, 4096}, {1, 32, 128, 2048}, {1, 32, 128, 4096},
                          {1, 12, 64, 1024}, {8, 25, 64, 2048},  {1, 25, 64, 64},    {1, 25, 64, 512}};
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  bool all_ok = true;
  for (const Shape& sh : shapes) {
    const long long kv = static_cast<long long>(sh.batch) * sh.heads * sh.ctx * sh.d;
    const long long cache_bytes = 2 * kv * 2;
    const int n = static_cast<int>(std::max(1LL, std::min(64LL, ((256LL << 20) + cache_bytes - 1) / cache_bytes)));
    std::vector<__half*> ks(n), vs(n), qs(n);
    for (int i = 0; i < n; ++i) {
      if (!check(cudaMalloc(&ks[i], kv * 2), "malloc k") || !check(cudaMalloc(&vs[i], kv * 2), "malloc v") ||
          !check(cudaMalloc(&qs[i], static_cast<size_t>(sh.batch) * sh.heads * sh.d * 2), "malloc q"))
        return 1;
      harness::fill_uniform<<<1024, 256, 0, s>>>(ks[i], kv, 11u * i + 1, -1.f, 1.f);
      harness::fill_uniform<<<1024, 256, 0, s>>>(vs[i], kv, 11u * i + 5, -1.f, 1.f);
      const long long nq = static_cast<long long>(sh.batch) * sh.heads * sh.d;
      harness::fill_uniform<<<16, 256, 0, s>>>(qs[i], nq, 11u * i + 7, -1.f, 1.f);
    }
    int32_t *bounds = nullptr;
    void* out = nullptr;
    float* ref = nullptr;
    cudaMalloc(&bounds, 3 * sh.batch * sizeof(int32_t));
    cudaMalloc(&out, static_cast<size_t>(sh.batch) * sh.heads * sh.d * 2);
    cudaMalloc(&ref, static_cast<size_t>(sh.batch) * sh.heads * sh.d * 4);
    std::vector<int32_t> host(3 * sh.batch);
    for (int b = 0; b < sh.batch; ++b) host[b] = 0, host[sh.batch + b] = sh.ctx, host[2 * sh.batch + b] = sh.ctx - 1;
    cudaMemcpy(bounds, host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
    const float scale = 1.0f / std::sqrt(static_cast<float>(sh.d));
    reference<<<sh.batch * sh.heads, 128, sh.ctx * sizeof(float), s>>>(qs[0], ks[0], vs[0], ref, sh.heads, sh.ctx,
                                                                       sh.d, scale);
    eet::AttentionParams p = {};
    p.out = out;
    p.q_stride_b = static_cast<int64_t>(sh.heads) * sh.d, p.q_stride_h = sh.d, p.q_stride_s = sh.d;
    p.k_stride_b = static_cast<int64_t>(sh.heads) * sh.ctx * sh.d, p.k_stride_h = static_cast<int64_t>(sh.ctx) * sh.d;
    p.k_stride_s = sh.d;
    p.v_stride_b = p.k_stride_b, p.v_stride_h = p.k_stride_h, p.v_stride_s = p.k_stride_s;
    p.kv_start = bounds, p.kv_end = bounds + sh.batch, p.q_offset = bounds + 2 * sh.batch;
    p.batch = sh.batch, p.heads_q = sh.heads, p.heads_kv = sh.heads, p.q_len = 1, p.kv_len = sh.ctx;
    p.head_dim = sh.d, p.scale = scale, p.causal = true, p.workspace = nullptr, p.cu_seqlens = nullptr;
    if (eet::attn::decode_workspace_bytes(p, sms) != 0) {
      printf("bs%d h%d d%d ctx%d: the plan wants the combine path; this harness times the cluster path only\n",
             sh.batch, sh.heads, sh.d, sh.ctx);
      continue;
    }
    const int planned = eet::attn::decode_plan(p, sms).splits;
    std::string line;
    char buf[64];
    double best = 1e30;
    int best_s = 0;
    for (int forced = 0; forced <= 16; ++forced) {  // 0: the planner's pick
      if (forced == 0) unsetenv("EET_HF_DECODE_SPLITS");
      else setenv("EET_HF_DECODE_SPLITS", std::to_string(forced).c_str(), 1);
      const double err = check_once(p, sh, qs[0], ks[0], vs[0], ref, sms, s);
      if (!(err <= 2e-3) && !no_check) {
        printf("bs%d h%d d%d ctx%d splits %d: max abs error %g vs the fp32 reference\n", sh.batch, sh.heads, sh.d,
               sh.ctx, forced, err);
        all_ok = false;
        continue;
      }
      bool ok = true;
      const double us = time_us(p, ks, vs, qs, sms, s, &ok);
      if (!ok) return 1;
      if (forced == 0) {
        snprintf(buf, sizeof buf, "planned(%d) %.1f us (%.0f%%) |", planned, us,
                 100.0 * cache_bytes / (us * 1e-6) / 1e9 / kCeilingGbps);
      } else {
        snprintf(buf, sizeof buf, " %d:%.1f", forced, us);
        if (us < best) best = us, best_s = forced;
      }
      line += buf;
    }
    unsetenv("EET_HF_DECODE_SPLITS");
    printf("%s bs%d h%d d%d ctx%d %s  best %d:%.1f us (%.0f%%)\n", tag, sh.batch, sh.heads, sh.d, sh.ctx, line.c_str(),
           best_s, best, 100.0 * cache_bytes / (best * 1e-6) / 1e9 / kCeilingGbps);
    for (int i = 0; i < n; ++i) cudaFree(ks[i]), cudaFree(vs[i]), cudaFree(qs[i]);
    cudaFree(bounds), cudaFree(out), cudaFree(ref);
  }
  return all_ok && check(cudaDeviceSynchronize(), "final") ? 0 : 1;
}
