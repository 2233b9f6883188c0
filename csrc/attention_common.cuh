// Device helpers shared by the prefill and decode attention kernels: the log2(e) scale of the exp2-domain
// softmax and the online-softmax offset. Header-only.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace eet {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;

// The offset subtracted from scores in the exponent for a running max m: m itself, but 0 while no key has
// been visible (m == -inf), so that exp2(-inf - 0) = 0 where exp2(-inf - (-inf)) would be NaN.
__device__ __forceinline__ float softmax_offset(float m) { return m == -INFINITY ? 0.f : m; }

}  // namespace attn
}  // namespace eet
