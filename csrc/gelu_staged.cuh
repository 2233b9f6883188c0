// HF's gelu_new evaluated with torch's roundings, shared by the bias_gelu kernel (activation.cu) and the fused
// epilogue of small_linear (small_linear.cu), so both produce the same bits from the same pre-activation.
#pragma once

#include "common.cuh"

namespace eet {

// HF's gelu_new, 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3)))), one torch CUDA op at a time:
// each op computes in fp32 and rounds to T, except pow(x, 3.0), which torch's CUDA kernel evaluates as
// x * x * x in T itself (two roundings). The _rn intrinsics keep nvcc from contracting a multiply and an add
// into an fma that torch's separate kernels never form (fp32).
template <typename T>
__device__ __forceinline__ float gelu_tanh_staged(float h) {
  const float x = round_to<T>(h);  // HF's Linear/Conv1D output is already in T
  const float cube = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(x, x)), x));
  const float inner = round_to<T>(__fadd_rn(x, round_to<T>(__fmul_rn(0.044715f, cube))));
  const float t = round_to<T>(tanhf(round_to<T>(__fmul_rn(0.7978845608028654f, inner))));
  return __fmul_rn(round_to<T>(__fmul_rn(0.5f, x)), round_to<T>(__fadd_rn(1.0f, t)));
}

}  // namespace eet
