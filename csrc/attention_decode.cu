// Decode attention (few query rows, long key range): split-K "flash-decoding" in one kernel, with the mask
// computed from per-sequence bounds (mask fusion, kernels.h).
//
// The key range that any query row of sequence b may see, [kv_start, min(kv_end, q_offset + q_len)), is cut
// into `splits` equal chunks. One block handles one chunk of one (batch, kv head) for a group of up to
// kQPerBlock query vectors (query heads of the GQA group x query rows), so K and V are read once for all of
// them. Each of the block's 4 warps streams its own rows of the chunk: a row is read by LPR lanes with 16-byte
// cp.async copies into per-lane shared-memory slots, kStages - 1 rounds ahead (each lane reads back only what it
// copied itself, so no barrier is involved); the warp keeps an online softmax in fp32 with a warp-uniform
// running max; the warps merge through shared memory at the end.
//
// Merging the splits. Grid x = (query chunk, kv head, batch), grid y = split; the `splits` blocks of one x form
// one thread block cluster (1, splits, 1). Each block leaves its partial (max, sum, unnormalized accumulator per
// query vector, log2 domain) in its own shared memory, the cluster syncs, and the blocks read the partials of
// all ranks over distributed shared memory, always in rank order 0..splits-1, so an output is bit-identical
// run to run whichever block computes it; a second cluster sync keeps every block (and its shared memory)
// alive until its peers have read it (attention_decode_merge.cuh). Who merges what: output elements go to the
// ranks in slices of kThreads (slice i to rank i % splits). Every merging thread issues its `splits` remote
// loads at once, so a slice costs one DSMEM round trip whatever its size; spreading only matters once a
// cluster has more than one slice (q vectors x head_dim > 128), where it keeps one SM from pulling every
// partial (up to 16 splits x 4 x 256 floats) through its own port. Contiguous slices keep the stores coalesced.
//
// Split rule (decode_plan, shapes only: the launch is fixed on the host and graph-capture safe): as many
// splits as fill one wave of resident blocks (kBlocksPerSm per SM, rounded down: no partial extra wave), no
// chunk under kMinChunk keys (or one pipeline round where that is longer), at most kMaxClusterSplits (16, a
// non-portable cluster size). GPT-2's decode step (12 heads, context 128-256, batch 1) thus gets 2-4 splits
// where it had 1, and bs1 h25 / h32 long contexts 10 and 8. The launcher trims a cluster that the device would
// not hold in one wave (cudaOccupancyMaxActiveClusters: GPCs of uneven SM counts, or no size-16 support) to the
// widest that fits; that changes the rounding only, never the path. Beyond the cap: shapes that want more than
// 16 splits stay with 16 (>= 144 blocks once 9+ (batch, kv head, query chunk) items share the GPU) unless the
// wave wants >= 32 splits (<= 8 items: 16 splits would leave over half the GPU idle) and a split capped at 16
// would stream >= kCombineMinSplitElems key elements. Only those (<= 8 items, e.g. batch 1 with 1-8 kv heads,
// context >= 8K at d128 / 16K at d64) keep the older path: up to kMaxSplits splits write fp32 partials to p.workspace and a combine
// kernel merges them (attention_decode_combine.cu), its fixed cost then small against the streaming it spreads.
// Dropping that path would cost those shapes up to half their bandwidth; they are the long-context GQA decodes.
//
// Programmatic dependent launch (common.cuh launch_pdl): the kernel may start while the previous kernel of the
// stream (kv_append, rotary, ...) finishes; it reads nothing (q, k, v, bounds all come from earlier kernels)
// before pdl_wait(), and triggers its own dependents at once. Before that wait it asks L2 for the first rounds of
// its chunk as an unpadded cache would place it (a prefetch reads no value).
//
// Files: attention_decode.cuh (shapes, loads, key chunks), attention_decode_split.cu (the kernel and its
// launcher), attention_decode_merge.cuh (the cluster merge), attention_decode_combine.cu (the combine kernel);
// this file fixes the plan and the workspace and picks the dtype.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention_decode.cuh"
#include "attention_kernels.h"
#include "common.cuh"

namespace eet {
namespace attn {

DecodePlan decode_plan(const AttentionParams& p, int num_sms) {
  DecodePlan plan{1, false};
  if (p.heads_kv <= 0 || p.batch <= 0 || p.q_len <= 0) return plan;
  const int64_t q_chunks = (static_cast<int64_t>(p.heads_q / p.heads_kv) * p.q_len + kQPerBlock - 1) / kQPerBlock;
  const int64_t base = q_chunks * p.heads_kv * p.batch;  // blocks per split
  const int64_t slots = static_cast<int64_t>(kBlocksPerSm) * (num_sms > 0 ? num_sms : 132);
  int64_t want = slots / base;  // rounded down: no partial extra wave
  // One pipeline round of the 2-byte types (the longest rounds) at least: a shorter chunk leaves splits empty.
  const int64_t round = decode_keys_per_round(p.head_dim, 2);
  const int64_t min_chunk = round > kMinChunk ? round : kMinChunk;
  const int64_t by_len = (static_cast<int64_t>(p.kv_len) + min_chunk - 1) / min_chunk;
  if (want > by_len) want = by_len;
  if (want > kMaxSplits) want = kMaxSplits;
  if (want < 1) want = 1;
  plan.splits = static_cast<int>(want);
  if (want <= kMaxClusterSplits) return plan;
  // The combine path only where it at least doubles the blocks streaming the cache, over a long enough context.
  const int64_t capped_split_elems =
      (static_cast<int64_t>(p.kv_len) + kMaxClusterSplits - 1) / kMaxClusterSplits * p.head_dim;
  if (want < 2 * kMaxClusterSplits || capped_split_elems < kCombineMinSplitElems) {
    plan.splits = kMaxClusterSplits;
    return plan;
  }
  plan.combine = true;
  return plan;
}

size_t decode_workspace_bytes(const AttentionParams& p, int num_sms) {
  const DecodePlan plan = decode_plan(p, num_sms);
  if (!plan.combine) return 0;
  const size_t rows_total = static_cast<size_t>(p.batch) * p.q_len * p.heads_q;
  return static_cast<size_t>(plan.splits) * rows_total * (static_cast<size_t>(p.head_dim) + 2) * sizeof(float);
}

cudaError_t launch_decode(DType dtype, const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream) {
  const DecodePlan plan = decode_plan(p, num_sms);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_decode_split<T>(p, aligned, plan, stream);
  });
}

}  // namespace attn
}  // namespace eet
