// Pieces shared by the two prefill kernels (attention_prefill_mma.cu, attention_prefill_simt.cu): where a
// sequence's rows live in the padded or the packed (varlen) layout, the key range a query tile may see, the
// block -> (tile, head, batch) mapping, zero rows for a tile that sees no key, and the host launch helper.
//
// Packed (varlen) layout (p.cu_seqlens set): one token axis for all sequences, no padding stored; the same
// kernels run with each sequence's rows, length and bounds taken from cu_seqlens (seq_rows below), so the
// padded path pays one null-pointer test per block.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention_common.cuh"
#include "kernels.h"

namespace eet {
namespace attn {

// ------------------------------------------------------------------------------------------------
// Where sequence b's rows live and how many queries it has.

struct SeqRows {
  int64_t q_base, k_base, v_base;  // element offset of the sequence's row 0 (head 0) in q, k, v
  int64_t out_row0;                // out row (of heads_q * head_dim elements) of the sequence's row 0
  int q_len;                       // query rows of this sequence
};

__device__ __forceinline__ SeqRows seq_rows(const AttentionParams& p, int b) {
  SeqRows r;
  if (p.cu_seqlens != nullptr) {
    const int64_t row0 = p.cu_seqlens[b];
    r.q_base = row0 * p.q_stride_s;
    r.k_base = row0 * p.k_stride_s;
    r.v_base = row0 * p.v_stride_s;
    r.out_row0 = row0;
    r.q_len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
  } else {
    r.q_base = static_cast<int64_t>(b) * p.q_stride_b;
    r.k_base = static_cast<int64_t>(b) * p.k_stride_b;
    r.v_base = static_cast<int64_t>(b) * p.v_stride_b;
    r.out_row0 = static_cast<int64_t>(b) * p.q_len;
    r.q_len = p.q_len;
  }
  return r;
}

// ------------------------------------------------------------------------------------------------
// Per-(batch, query tile) key range.

struct TileRange {
  int ks, ke;     // clamped kv_start / kv_end of the sequence
  long long qo;   // q_offset of the sequence
  int lo, hi;     // keys [lo, hi) may be visible to some row of the tile; empty when hi <= lo
};

__device__ __forceinline__ TileRange tile_range(const AttentionParams& p, const SeqRows& sr, int b, int m0,
                                                int m_end) {
  TileRange r;
  if (p.cu_seqlens != nullptr) {
    // A packed sequence sees its own keys only, the same rows as its queries.
    r.ks = 0;
    r.ke = sr.q_len;
    r.qo = 0;
  } else {
    const int s = p.kv_start[b], e = p.kv_end[b];
    r.ks = min(max(s, 0), p.kv_len);
    r.ke = min(max(e, 0), p.kv_len);
    r.qo = static_cast<long long>(p.q_offset[b]);
  }
  r.lo = r.ks;
  long long hi = r.ke;
  if (p.causal) {
    // Row m sees keys j <= qo + m; the tile's last row is m_end - 1.
    const long long causal_end = r.qo + static_cast<long long>(m_end);
    hi = causal_end < hi ? causal_end : hi;
  }
  r.hi = hi < static_cast<long long>(r.lo) ? r.lo : static_cast<int>(hi);
  (void)m0;
  return r;
}

// ------------------------------------------------------------------------------------------------

// Zeros for the rows [m0, m_end) of one (b, h): a tile whose rows see no key.
template <typename T, int D, int THREADS>
__device__ __forceinline__ void write_zero_rows(const AttentionParams& p, int64_t out_row0, int h, int m0, int m_end,
                                                int tid) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kChunks = D / kVec;
  T* out = static_cast<T*>(p.out);
  for (int idx = tid; idx < (m_end - m0) * kChunks; idx += THREADS) {
    const int r = idx / kChunks;
    const int c = idx - r * kChunks;
    const int64_t row = (out_row0 + (m0 + r)) * p.heads_q + h;
    *reinterpret_cast<uint4*>(out + row * D + c * kVec) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// Block index -> (query tile, head, batch). Tiles with the largest row index come first: under a causal
// mask they have the most keys, so the longest blocks start earliest.
__device__ __forceinline__ void decode_block(const AttentionParams& p, int num_mblocks, int& mb, int& h, int& b) {
  const int64_t bh_count = static_cast<int64_t>(p.batch) * p.heads_q;
  const int64_t idx = blockIdx.x;
  mb = num_mblocks - 1 - static_cast<int>(idx / bh_count);
  const int64_t bh = idx % bh_count;
  h = static_cast<int>(bh % p.heads_q);
  b = static_cast<int>(bh / p.heads_q);
}

// ------------------------------------------------------------------------------------------------
// Host: launch one prefill kernel (signature (AttentionParams, int aligned)) on a 1-D grid, raising its dynamic
// shared memory limit first when it needs more than the default 48 KB.

template <typename Kernel>
cudaError_t launch_with_smem(Kernel kernel, int64_t blocks, int threads, size_t smem, const AttentionParams& p,
                             bool aligned, cudaStream_t stream) {
  if (blocks <= 0) return cudaSuccess;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(p, aligned ? 1 : 0);
  return cudaGetLastError();
}

}  // namespace attn
}  // namespace eet
