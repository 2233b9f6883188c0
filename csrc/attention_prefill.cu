// Prefill attention (many query rows): flash-attention (online softmax) over tiles of query rows, with the
// mask computed from per-sequence bounds (mask fusion, kernels.h), for the padded and the packed (varlen)
// layout. This file picks the kernel by dtype:
//   fp16 / bf16: tensor cores through mma.sync (attention_prefill_mma.cu);
//   fp32: a SIMT kernel with the same tiling and masking (attention_prefill_simt.cu), since no fp32
//   tensor-core path keeps fp32 accuracy.
// The helpers both share (sequence rows, tile key ranges, zero rows, launch) are in attention_prefill.cuh.
#include <cuda_runtime.h>

#include "attention_kernels.h"
#include "common.cuh"

namespace eet {
namespace attn {

cudaError_t launch_prefill(DType dtype, const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (sizeof(T) == 4) {
      return launch_prefill_simt(p, aligned, stream);
    } else {
      return launch_prefill_mma<T>(p, aligned, num_sms, stream);
    }
  });
}

}  // namespace attn
}  // namespace eet
