// Decode attention (few query rows, long key range): split-K "flash-decoding" with the mask computed from
// per-sequence bounds (mask fusion, kernels.h).
//
// The key range that any query row of sequence b may see, [kv_start, min(kv_end, q_offset + q_len)), is
// cut into `splits` equal chunks. The count depends on shapes only (so it is fixed on the host and the
// launch is graph-capture safe): as many as fill one wave of resident blocks (2 per SM), no chunk under
// kMinChunk keys. One block handles one chunk of one (batch, kv head) for a group of up to kQPerBlock
// query vectors (query heads of the GQA group x query rows), so K and V are read once for all of them.
// Each of the block's 4 warps streams its own rows of the chunk: a row is read by LPR lanes with 16-byte
// cp.async copies into per-lane shared-memory slots, kStages - 1 rounds ahead (each lane reads back only
// what it copied itself, so no barrier is involved); the warp keeps an online softmax in fp32 with a
// warp-uniform running max; the warps merge through shared memory at the end. With one split the block
// normalizes and writes the output itself; otherwise it writes its partial (max, sum, unnormalized
// accumulator; log2 domain) to the workspace and a combine kernel, launched as a programmatic dependent
// (its launch overlaps this kernel), merges them.
//
// Files: attention_decode.cuh (shapes, loads, key chunks), attention_decode_split.cu (the split-K kernel, which
// is also the single pass when there is one split), attention_decode_combine.cu (the combine kernel); this
// file fixes the split count and the workspace and picks the dtype.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention_decode.cuh"
#include "attention_kernels.h"
#include "common.cuh"

namespace eet {
namespace attn {

// Enough blocks to fill the GPU a few times over, but no chunk shorter than kMinChunk keys. Shapes only:
// the bounds live on the device.
int decode_num_splits(const AttentionParams& p, int num_sms) {
  if (p.heads_kv <= 0 || p.batch <= 0 || p.q_len <= 0) return 1;
  const int64_t q_chunks = (static_cast<int64_t>(p.heads_q / p.heads_kv) * p.q_len + kQPerBlock - 1) / kQPerBlock;
  const int64_t base = q_chunks * p.heads_kv * p.batch;
  const int64_t slots = static_cast<int64_t>(kBlocksPerSm) * (num_sms > 0 ? num_sms : 132);
  int64_t splits = kWaves * slots / base;  // rounded down: no partial extra wave
  const int64_t by_len = (static_cast<int64_t>(p.kv_len) + kMinChunk - 1) / kMinChunk;
  if (splits > by_len) splits = by_len;
  if (splits > kMaxSplits) splits = kMaxSplits;
  if (splits < 1) splits = 1;
  return static_cast<int>(splits);
}

size_t decode_workspace_bytes(const AttentionParams& p, int num_sms) {
  const int splits = decode_num_splits(p, num_sms);
  if (splits <= 1) return 0;
  const size_t rows_total = static_cast<size_t>(p.batch) * p.q_len * p.heads_q;
  return static_cast<size_t>(splits) * rows_total * (static_cast<size_t>(p.head_dim) + 2) * sizeof(float);
}

cudaError_t launch_decode(DType dtype, const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream) {
  const int splits = decode_num_splits(p, num_sms);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_decode_split<T>(p, aligned, splits, stream);
  });
}

}  // namespace attn
}  // namespace eet
