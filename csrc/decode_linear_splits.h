// decode_linear's kernels by work split (decode_linear_split*.cu): kSplit warps stream one 16-row tile, each a
// 1/kSplit slice of K. decode_linear.cu picks the split per call. p == nullptr only asks whether the (norm, epilogue)
// pair has a kernel.
#pragma once

#include <cuda_runtime.h>

#include "decode_linear.h"
#include "kernels.h"

namespace eet {

cudaError_t decode_linear_split8(DType dtype, const DecodeLinearParams* p, DecodeNorm norm, DecodeEpilogue epilogue,
                                 cudaStream_t stream);
cudaError_t decode_linear_split16(DType dtype, const DecodeLinearParams* p, DecodeNorm norm, DecodeEpilogue epilogue,
                                  cudaStream_t stream);

}  // namespace eet
