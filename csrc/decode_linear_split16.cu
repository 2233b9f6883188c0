// decode_linear's kernels with 16 warps per 16-row tile (decode_linear_kernel.cuh, launched from
// decode_linear_launch.cuh; decode_linear.cu picks the split).
#include "decode_linear_launch.cuh"

namespace eet {
EET_DECODE_LINEAR_SPLIT(16)
}  // namespace eet
