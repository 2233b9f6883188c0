// Exact (erf) gelu for 16-bit tensors without libdevice's erff: used by the bias_gelu kernel (activation.cu) for
// fp16 / bf16, branch-free, and more accurate than torch's fp32 formula in the negative tail. On the H200 it alone
// did not speed the kernel up (2.52 -> 2.57 TB/s at 8192 x 3072): the block shape did (activation.cu). fp32 tensors
// keep erff.
#pragma once

#include "common.cuh"

namespace eet {

// erfc(z) for z >= 0 as t * 2^(Q(t) - z^2 log2(e)) with t = 1 / (1 + z/2): one reciprocal, one exp2 and nine
// FMAs, no branch. Q's coefficients are a near-minimax degree-8 fit on z in [0, 10] (the fitting script:
// `git show 5090034:scripts/fit_gelu_erfc.py`); relative error of erfc below 4e-6 on [0, 4.5] and 1.6e-5 on [0, 9]
// in fp32 with exact exp2 and reciprocal, the hardware approximations adding ~1e-7: far below fp16's rounding (2^-11
// relative) and bf16's (2^-8). Being relative, the error stays small in the tail, where torch's fp32 1 + erf(x)
// cancels.
__device__ __forceinline__ float erfc_fast(float z) {
  float t;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(fmaf(0.5f, z, 1.0f)));
  float q = 0.107174851f;
  q = fmaf(q, t, -0.772605121f);
  q = fmaf(q, t, 2.07424808f);
  q = fmaf(q, t, -2.51484752f);
  q = fmaf(q, t, 1.19532406f);
  q = fmaf(q, t, -0.327761173f);
  q = fmaf(q, t, 0.630866408f);
  q = fmaf(q, t, 1.43290317f);
  q = fmaf(q, t, -1.82530332f);
  constexpr float kLog2e = 1.4426950408889634f;
  const float arg = fmaf(-z * kLog2e, z, q);  // -inf for z = inf (t = 0): 2^-inf = 0
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(arg));
  return t * e;
}

// gelu(h) = h * Phi(h), Phi(h) = erfc(-h / sqrt(2)) / 2: for h < 0 directly (no cancellation), for h >= 0 as
// 1 - erfc(h / sqrt(2)) / 2. Limits: gelu(+inf) = inf, gelu(-large) = -0, NaN stays NaN; gelu(-inf) = NaN as
// torch's formula gives (-inf * 0).
__device__ __forceinline__ float gelu_erf_fast(float h) {
  constexpr float kSqrtHalf = 0.7071067811865476f;
  const float half_erfc = 0.5f * erfc_fast(fabsf(h) * kSqrtHalf);
  return h * (h >= 0.0f ? 1.0f - half_erfc : half_erfc);
}

}  // namespace eet
