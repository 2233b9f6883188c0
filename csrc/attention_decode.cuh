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

#include "attention_common.cuh"
#include "attention_ptx.cuh"
#include "kernels.h"

namespace eet {
namespace attn {

// Block shape. Other shapes measured on the H200 (8 warps, one block per SM; 3-4 blocks per SM with shorter
// pipelines; blocks of one query vector) were no faster at batch 1 and slower at short contexts: docs/decode-attention.md
// and docs/measured-and-dropped.md.
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kQPerBlock = 4;   // query vectors per block (more go to further blocks of the grid)
constexpr int kUnroll = 4;      // key rows per lane group per round
constexpr int kBlocksPerSm = 2;  // the decode kernels' occupancy (registers, pipeline smem)
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

// Which tensor-core decode kernel: the register-load one (attention_decode_mma_regs.cu) at head_dim 128 where a split
// holds at most kRegsMaxChunk keys (<= 8 steps per warp), the shared-memory one elsewhere. Measured on the H200 at
// bs1 h32 d128 (evaluation/results/kernels-h200.md; docs/decode-attention.md): at the planned split (chunks of
// 256-512 keys) 13.3 / 21.7 us against 14.1 / 23.7 at ctx2048 / 4096; over 2-3 splits (683+ keys) up to 40% slower,
// and slower at head_dim 64 at every split. kv_len / splits is the host's bound on a split's keys.
constexpr int64_t kRegsMaxChunk = 512;
inline bool decode_mma_regs_pays(int head_dim, int64_t kv_len, int splits) {
  return head_dim == 128 && splits > 0 && (kv_len + splits - 1) / splits <= kRegsMaxChunk;
}

// Weight of a partial (a warp's or a split's) with running max m in a merge whose overall max is mmax:
// 2^(m - mmax), and 0 for a partial that saw no visible key.
__device__ __forceinline__ float partial_weight(float m, float mmax) { return m == -INFINITY ? 0.f : exp2f(m - mmax); }

}  // namespace attn
}  // namespace eet
