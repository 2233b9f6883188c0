// Shapes and helpers of the decode kernels (attention_decode.cu has the design): the block shape and split
// policy constants, the per-(dtype, head_dim) pipeline configuration, 16-byte row loads, and the key chunk of one
// split. Header-only; shared by attention_decode.cu, attention_decode_split.cu, attention_decode_merge.cuh and
// attention_decode_combine.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "attention_common.cuh"
#include "attention_ptx.cuh"
#include "kernels.h"

namespace eet {
namespace attn {

// Warps per block and blocks per SM: compile-time overrides (-DEET_DECODE_WARPS=8 -DEET_DECODE_BLOCKS_PER_SM=1) exist
// for scripts/harness_decode.cu, which times block shapes the kernels fix at compile time.
#ifndef EET_DECODE_WARPS
#define EET_DECODE_WARPS 4
#endif
#ifndef EET_DECODE_BLOCKS_PER_SM
#define EET_DECODE_BLOCKS_PER_SM 2
#endif
constexpr int kWarps = EET_DECODE_WARPS;
constexpr int kThreads = kWarps * 32;
constexpr int kQPerBlock = 4;   // query vectors per block (more go to further blocks of the grid)
constexpr int kUnroll = 4;      // key rows per lane group per round
constexpr int kBlocksPerSm = EET_DECODE_BLOCKS_PER_SM;  // the decode kernels' occupancy (registers, pipeline smem)
// Tried and dropped (H200, 2026-12-02; logs/2026-12-02c/q1-experiment): blocks of one query vector for sequences
// with a single one (80 registers instead of ~180) with a 3-stage pipeline, 4 blocks per SM and up to 16 splits.
// Slower everywhere: bs1 h25 d64 ctx2048 9.8 us (8.7 here), h32 d128 ctx2048 18.0 (14.9), bs8 h25 ctx2048 44 (34):
// the rounds each warp keeps in flight matter more than warps per SM.
// Also tried and dropped (H200, 2026-12-03, scripts/harness_decode.cu, logs/2026-12-03b): tensor-core blocks of 32
// keys per warp step and 2-4 pipeline stages (batch-1 times within 3% of the defaults at every shape), and a merge
// without clusters (each split's partial to the workspace, the group's last block merging them after an atomic
// ticket): no faster (bs1 h25 d64 ctx2048 8.8 us at its best split vs 8.2, h32 d128 ctx4096 23.1 vs 24.0) although
// a plain read of the same bytes loses 0.8-1.5 us to clusters of 8 (scripts/harness_read_ceiling.cu).
// And on 2026-12-04 (logs/2026-12-04): blocks of 8 warps, one per SM, on clusters or on that ticket merge (at most
// 3% faster, d128 up to 14% slower: spreading the cache evenly over all SMs does not raise the rate). Kept from that
// day: the tensor-core kernel's copies issued without a division and a 64-bit multiply per copy (~25% fewer
// instructions per step; 14-17% faster where a warp streams many steps, the planned batch-1 splits within 2%), once
// its query loads were pinned ahead of the copies. The tensor-core kernel's loads alone (no arithmetic) reach 45 /
// 60 / 62% of the copy ceiling at bs1 h25 ctx2048 / h25 ctx4096 / h32 d128 ctx2048.
// And later that day (logs/2026-12-04b): the spread and load-balancing cluster scheduling policies (no change); K and
// V loaded into registers for head_dim 64 as well (slower at every planned split: h25 ctx2048 8.6-9.5 us vs 8.0, in
// rings of 2-4 register buffers or batches of 1-3 steps; kept for head_dim 128 only, decode_mma_regs_pays below).
// And on 2026-12-04c (scripts/harness_decode.cu, same-call A/B): with O accumulated transposed in both tensor-core
// kernels (attention_decode_mma_common.cuh) bs1 h25 ctx2048 / 4096, h32 d128 ctx2048 / 4096 went 8.0 / 11.9 / 13.6 /
// 21.8 -> 7.9 / 11.6 / 13.0 / 21.2 us. Planning for 3 or 4 blocks per SM (the shared-memory kernel with 2-4 stages
// or 32-key steps, the register kernel at head_dim 64, which fits 3 blocks per SM) gained at most 4% at d64 (best
// 7.6 / 11.0 us: the register kernel over 11 splits) and lost at short contexts (h12 ctx1024: 5.1 vs 4.9 us), so
// kBlocksPerSm stays 2.
// And on 2026-12-04d (logs/2026-12-04d): the register kernel at head_dim 64 with 16 or 32 keys per warp step, planned
// for 2-4 blocks per SM or with 8 warps (best 7.6 / 11.1 us against 7.9 / 11.7), and an L2 prefetch of each block's
// whole chunk after its first loads (slower: d128 ctx4096 21.2 -> 26.0 us). Not taken. The same call measured the floor
// at 13.1 MB (bs1 h25 d64 ctx2048): a decode-shaped read with no arithmetic reaches 61% of the copy ceiling, 55% with
// the cluster merge, 50% with an atomic-ticket merge: 60% there is below the floor of both merges measured. A second
// (combine) kernel behind a merge-free read, measured on 2026-12-04e: 51% (evaluation/results/decode-floor-h200.md).
// Also on 2026-12-04e: a kernel putting a block's whole chunk (<= 512 keys) in flight at once, K in registers and V in
// shared memory, with one softmax over the chunk: correct, slower at every head_dim-64 shape (ctx2048 / 4096 8.4 /
// 13.3 us against 7.9 / 11.7). Not taken (source in logs/2026-12-04e).
// Split policy (decode_plan in attention_decode.cu). With the splits merged inside one kernel a split costs
// little more than its own loads, so chunks go down to one pipeline round of keys.
constexpr int kMinChunk = 64;              // keys per split at least (raised to one round where a round is longer)
constexpr int kMaxClusterSplits = 16;      // splits merged in one cluster; above 8 needs the non-portable size
constexpr int kMaxSplits = 128;            // the combine path's cap (its smem holds one weight per split)
// The combine path (workspace + second kernel) only pays for its ~2-3 us of fixed cost where it at least doubles
// the splits and a split capped at kMaxClusterSplits would stream at least this many key elements (keys x
// head_dim): 1024 keys at d64, 512 at d128, i.e. >= 256 KB of fp16 K+V per block. Elsewhere the cluster path
// with fewer, longer splits is faster. A first estimate: the GPU benchmark should place it.
constexpr int64_t kCombineMinSplitElems = 65536;

constexpr int pow2_ceil(int n) { return n <= 1 ? 1 : 2 * pow2_ceil((n + 1) / 2); }

// Lanes that read one key row (16 bytes each, at most a warp) and keys a block consumes per pipeline round,
// for a row of head_dim elements of elem_bytes bytes. Host and device.
constexpr int decode_lanes_per_row(int head_dim, int elem_bytes) {
  return pow2_ceil(head_dim * elem_bytes / 16) < 32 ? pow2_ceil(head_dim * elem_bytes / 16) : 32;
}
constexpr int decode_keys_per_round(int head_dim, int elem_bytes) {
  return kWarps * (32 / decode_lanes_per_row(head_dim, elem_bytes)) * kUnroll;
}

template <typename T, int D>
struct DecodeConfig {
  static constexpr int kVec = 16 / sizeof(T);          // elements per 16-byte vector
  static constexpr int kNV = D / kVec;                 // vectors per row
  static constexpr int kLPR = decode_lanes_per_row(D, sizeof(T));  // lanes per row
  static constexpr int kVPL = (kNV + kLPR - 1) / kLPR; // vectors per lane
  static constexpr int kGroups = 32 / kLPR;            // rows a warp reads at once
  static constexpr int kKeysPerRound = kWarps * kGroups * kUnroll;  // keys a block consumes per round
  static constexpr int kKeysPerWarpStep = kGroups * kUnroll;         // keys one warp consumes per round
  static_assert(kKeysPerRound == decode_keys_per_round(D, sizeof(T)), "host split rule out of step");
  // cp.async pipeline depth: kStages - 1 rounds (4 KB each per warp with one vector per lane) in flight.
  static constexpr int kStages = kVPL == 1 ? 5 : 3;
  // Pipeline buffers: [stage][warp][u][v][k or v][lane] 16-byte slots; each lane reads back only the slots
  // it filled itself, so no barrier is needed, only cp.async.wait_group.
  static constexpr int kSlotsPerStage = kWarps * kUnroll * kVPL * 2 * 32;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kStages) * kSlotsPerStage * 16;
  static_assert(D % kVec == 0, "head_dim must be a multiple of 16 bytes");
};

// 16 bytes of T at p as 4 raw words; the scalar path for unaligned tensors reads element by element.
template <typename T>
__device__ __forceinline__ uint4 load16(const T* p, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint4*>(p));
  uint4 r;
  if constexpr (sizeof(T) == 4) {
    const unsigned* s = reinterpret_cast<const unsigned*>(p);
    r.x = s[0], r.y = s[1], r.z = s[2], r.w = s[3];
  } else {
    const unsigned short* s = reinterpret_cast<const unsigned short*>(p);
    r.x = s[0] | (static_cast<unsigned>(s[1]) << 16);
    r.y = s[2] | (static_cast<unsigned>(s[3]) << 16);
    r.z = s[4] | (static_cast<unsigned>(s[5]) << 16);
    r.w = s[6] | (static_cast<unsigned>(s[7]) << 16);
  }
  return r;
}

// Raw 16 bytes -> floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& r, float (&f)[16 / sizeof(T)]);
template <>
__device__ __forceinline__ void unpack16<float>(const uint4& r, float (&f)[4]) {
  f[0] = __uint_as_float(r.x), f[1] = __uint_as_float(r.y), f[2] = __uint_as_float(r.z), f[3] = __uint_as_float(r.w);
}
template <>
__device__ __forceinline__ void unpack16<__half>(const uint4& r, float (&f)[8]) {
  const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    *reinterpret_cast<unsigned*>(&h) = w[i];
    const float2 v = __half22float2(h);
    f[2 * i] = v.x, f[2 * i + 1] = v.y;
  }
}
template <>
__device__ __forceinline__ void unpack16<__nv_bfloat16>(const uint4& r, float (&f)[8]) {
  const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 h;
    *reinterpret_cast<unsigned*>(&h) = w[i];
    const float2 v = __bfloat1622float2(h);
    f[2 * i] = v.x, f[2 * i + 1] = v.y;
  }
}

// Block -> (query chunk, kv head, batch) along grid x, split along grid y (= the cluster rank on the cluster path),
// for both decode kernels. The clusters of a head's query chunks are adjacent, so they read the same K/V while it
// is in L2.
struct DecodeBlockIndex {
  int qc, hk, b, split;
};

__device__ __forceinline__ DecodeBlockIndex decode_block_index(const AttentionParams& p, int q_chunks) {
  int64_t idx = blockIdx.x;
  DecodeBlockIndex r;
  r.qc = static_cast<int>(idx % q_chunks);
  idx /= q_chunks;
  r.hk = static_cast<int>(idx % p.heads_kv);
  r.b = static_cast<int>(idx / p.heads_kv);
  r.split = static_cast<int>(blockIdx.y);
  return r;
}

// The visible key range of sequence b for any of its query rows, and its chunk `split` of `splits`.
struct ChunkRange {
  int lo, hi;    // keys [lo, hi) of this block's chunk; empty when hi <= lo
  long long qo;  // q_offset of the sequence
};

template <int kRound>
__device__ __forceinline__ ChunkRange chunk_range(const AttentionParams& p, int b, int split, int splits) {
  ChunkRange c;
  const int ks = min(max(p.kv_start[b], 0), p.kv_len);
  const int ke = min(max(p.kv_end[b], 0), p.kv_len);
  c.qo = static_cast<long long>(p.q_offset[b]);
  long long hi = ke;
  if (p.causal) {
    const long long causal_end = c.qo + static_cast<long long>(p.q_len);  // last row sees j <= qo + q_len - 1
    hi = causal_end < hi ? causal_end : hi;
  }
  const long long n = hi > ks ? hi - ks : 0;
  // Chunk length rounded up to kRound keys (one warp's share of a round): rounding to whole block rounds instead
  // left splits empty (2048 keys in 10 splits of 256: 8 busy blocks, 2 idle); now the last round of a chunk may be
  // partial, the warps past its end skipping it.
  long long len = (n + splits - 1) / splits;
  len = (len + kRound - 1) / kRound * kRound;
  long long lo = ks + split * len;
  long long end = lo + len;
  const long long stop = ks + n;
  lo = lo < stop ? lo : stop;
  end = end < stop ? end : stop;
  c.lo = static_cast<int>(lo);
  c.hi = static_cast<int>(end);
  return c;
}

// The keys that split `split` of `splits` would stream if every key of the cache were visible ([0, kv_len): no
// padding, the last query row at the end). Known before any bounds are read, so it can guide an L2 prefetch
// issued before pdl_wait(); where padding or causality shrinks the real chunk, some prefetched lines go unused.
template <int kRound>
__device__ __forceinline__ ChunkRange chunk_range_unpadded(int kv_len, int split, int splits) {
  int len = (kv_len + splits - 1) / splits;
  len = (len + kRound - 1) / kRound * kRound;
  const long long lo = static_cast<long long>(split) * len;
  const long long hi = lo + len;
  ChunkRange c;
  c.lo = static_cast<int>(lo < kv_len ? lo : kv_len);
  c.hi = static_cast<int>(hi < kv_len ? hi : kv_len);
  c.qo = 0;
  return c;
}

// Before pdl_wait(), while the previous kernel (kv_append at a decode step) finishes: ask L2 for the K and V lines of
// the first `rows_ahead` keys of this split's chunk (chunks rounded to kRound keys) as an unpadded cache would place
// them. A prefetch reads no value, so rows that kernel is still writing are no hazard; it moves the first HBM round
// trip off the critical path. kb / vb: this (batch, kv head)'s K and V. Every thread of the block calls it.
template <typename T, int D, int kRound>
__device__ __forceinline__ void prefetch_chunk_start(const AttentionParams& p, const T* kb, const T* vb, int split,
                                                     int splits, int rows_ahead) {
  const ChunkRange pc = chunk_range_unpadded<kRound>(p.kv_len, split, splits);
  constexpr int kRowBytes = D * static_cast<int>(sizeof(T));
  constexpr int kLinesPerRow = (kRowBytes + 127) / 128;
  const int rows = min(pc.hi - pc.lo, rows_ahead);
  for (int i = static_cast<int>(threadIdx.x); i < 2 * rows * kLinesPerRow; i += kThreads) {
    const int line = i % kLinesPerRow;
    const int row = pc.lo + (i / kLinesPerRow) % rows;
    const T* base = i < rows * kLinesPerRow ? kb + static_cast<int64_t>(row) * p.k_stride_s
                                            : vb + static_cast<int64_t>(row) * p.v_stride_s;
    prefetch_l2(base + line * (128 / static_cast<int>(sizeof(T))));
  }
}

// EET_HF_DECODE_MMA=0 (read per call, so a test can compare both) keeps 16-bit decodes on the CUDA-core kernel
// instead of the tensor-core one (attention_decode_mma.cu).
inline bool decode_mma_enabled() {
  const char* v = std::getenv("EET_HF_DECODE_MMA");
  return v == nullptr || v[0] != '0';
}

// Which tensor-core decode kernel: the register-load one (attention_decode_mma_regs.cu) at head_dim 128 where a split
// holds at most kRegsMaxChunk keys (<= 8 steps per warp), the shared-memory one elsewhere. Measured on the H200
// (scripts/harness_decode.cu, logs/2026-12-04b, bs1 h32 d128): at the planned split (chunks of 256-512 keys) 13.3 /
// 21.7 us against 14.1 / 23.7 at ctx2048 / 4096, and 4-7 splits of 2048 keys all faster; 2-3 splits (683+ keys) up
// to 40% slower, and head_dim 64 slower at every split. kv_len / splits is the host's bound on a split's keys.
// EET_HF_DECODE_MMA_REGS=1 / 0 (read per call, so a test can run both on any case) forces it on / off.
constexpr int64_t kRegsMaxChunk = 512;
inline bool decode_mma_regs_pays(int head_dim, int64_t kv_len, int splits) {
  const char* v = std::getenv("EET_HF_DECODE_MMA_REGS");
  if (v != nullptr && (v[0] == '0' || v[0] == '1')) return v[0] == '1';
  return head_dim == 128 && splits > 0 && (kv_len + splits - 1) / splits <= kRegsMaxChunk;
}

// EET_HF_DECODE_PREFETCH=0 (read once per process) turns off the decode kernel's L2 prefetch: for A/B timing.
inline bool decode_prefetch_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("EET_HF_DECODE_PREFETCH");
    return v == nullptr || v[0] != '0';
  }();
  return enabled;
}

// Weight of a partial (a warp's or a split's) with running max m in a merge whose overall max is mmax:
// 2^(m - mmax), and 0 for a partial that saw no visible key.
__device__ __forceinline__ float partial_weight(float m, float mmax) { return m == -INFINITY ? 0.f : exp2f(m - mmax); }

}  // namespace attn
}  // namespace eet
