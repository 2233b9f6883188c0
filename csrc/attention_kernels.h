// Launchers of the attention kernels, shared by attention.cu (dispatch) and the attention_prefill*.cu /
// attention_decode*.cu files. Host-only declarations; see kernels.h for AttentionParams and the visibility rule.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace eet {
namespace attn {

// Head dims with kernel instantiations (prefill and decode both have all of them).
inline bool supported_head_dim(int d) { return d == 32 || d == 64 || d == 80 || d == 96 || d == 128 || d == 256; }

// Query lengths up to this go to the split-K decode kernels, longer ones to the prefill kernels.
constexpr int kDecodeMaxQLen = 8;

// True when q, k and v may be read with 16-byte vectors: 16-byte aligned base pointers and every stride
// of a dimension longer than 1 a multiple of 16 bytes. Otherwise the kernels take a scalar load path.
bool vector_loads_ok(const AttentionParams& p, size_t elem_size);

// Prefill: flash-attention over tiles of query rows (tensor cores for fp16/bf16, SIMT for fp32); num_sms picks
// the tile shape where it depends on how full the grid leaves the GPU.
cudaError_t launch_prefill(DType dtype, const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream);
// The two kernels behind it, each with a switch over the head dims (cudaErrorInvalidValue for others):
// fp32 (attention_prefill_simt.cu), and T = __half or __nv_bfloat16 (attention_prefill_mma.cu).
cudaError_t launch_prefill_simt(const AttentionParams& p, bool aligned, cudaStream_t stream);
template <typename T>
cudaError_t launch_prefill_mma(const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream);

// Decode: split-K over the visible key range. The splits of one (batch, kv head, query chunk) form one thread
// block cluster and merge over distributed shared memory inside the one kernel; only shapes that want more splits
// than a cluster holds, over a long context, write partials to p.workspace for a second (combine) kernel.
struct DecodePlan {
  int splits;    // key chunks per (batch, kv head, query chunk), >= 1
  bool combine;  // true: partials to p.workspace + combine kernel; false: one kernel (a cluster of `splits`)
};
// Shapes only (never device data): fixed on the host, so the launch is graph-capture safe.
DecodePlan decode_plan(const AttentionParams& p, int num_sms);
size_t decode_workspace_bytes(const AttentionParams& p, int num_sms);  // 0 unless plan.combine
cudaError_t launch_decode(DType dtype, const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream);
// The kernels behind it, T = float, __half or __nv_bfloat16. launch_decode_split (attention_decode_split.cu):
// the split-K kernel for p.head_dim (cudaErrorInvalidValue for other head dims); it writes out itself (one split,
// or a cluster of splits), or, with plan.combine, writes its partials to p.workspace and launches the combine.
// A cluster wider than fits the device (occupancy, or no non-portable size) runs with fewer splits.
// launch_decode_combine (attention_decode_combine.cu): merges the partials of `splits` splits into out.
template <typename T>
cudaError_t launch_decode_split(const AttentionParams& p, bool aligned, DecodePlan plan, cudaStream_t stream);
// The decode kernels' common signature: (params, aligned, splits, query chunks, workspace partials (accumulators,
// max/sum) or nullptr). launch_decode_split launches any of the three kernels with the same grid and plan.
using DecodeKernel = void (*)(AttentionParams, int, int, int, float*, float*);
// The tensor-core decode kernel (attention_decode_mma.cu) for T = __half / __nv_bfloat16 and head_dim, with its
// dynamic shared memory in *smem_bytes; nullptr for head dims it does not cover (64 and 128 only). 16-byte aligned
// tensors only.
template <typename T>
DecodeKernel decode_mma_kernel_for(int head_dim, size_t* smem_bytes);
// The same with K and V loaded into registers, no shared-memory pipeline (attention_decode_mma_regs.cu; head_dim 128
// only, nullptr for others; the launcher's rule for which of the two runs is decode_mma_regs_pays in
// attention_decode.cuh).
template <typename T>
DecodeKernel decode_mma_regs_kernel_for(int head_dim, size_t* smem_bytes);
template <typename T>
cudaError_t launch_decode_combine(const float* ws_acc,  // [splits, rows_total, head_dim]
                                  const float* ws_ml,   // [2, splits, rows_total]: running max, then sum
                                  T* out,               // [rows_total, head_dim]
                                  int64_t rows_total, int head_dim, int splits, cudaStream_t stream);

}  // namespace attn
}  // namespace eet
