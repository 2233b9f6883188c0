// Prefill attention: flash-attention (online softmax) over tiles of query rows, with the mask computed
// from per-sequence bounds (mask fusion, kernels.h). One block owns a tile of query rows of one
// (batch, query head) and walks the key/value tiles of the visible range only: keys before kv_start,
// from kv_end on, and past the causal limit of the tile's last row are never loaded.
//
// fp16 / bf16: tensor cores through mma.sync m16n8k16 (fp32 accumulate), ldmatrix from padded shared
// memory, K/V tiles double-buffered with cp.async. Each of the 4 warps owns 32 query rows (16 for
// head_dim 256), so that every K/V fragment read from shared memory feeds two mma tiles.
// fp32: a SIMT kernel with the same tiling and masking (no fp32 tensor-core path keeps fp32 accuracy).
//
// Masking inside a tile: score = -inf for an invisible key; the running max is replaced by 0 in the
// exponent while it is still -inf, so a row that has seen no visible key yet accumulates exactly 0 and
// never NaN; at the end a row with a zero sum writes zeros.
//
// Packed (varlen) layout (p.cu_seqlens set): one token axis for all sequences, no padding stored; the same
// kernels run with each sequence's rows, length and bounds taken from cu_seqlens (seq_rows below), so the
// padded path pays one null-pointer test per block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_kernels.h"
#include "common.cuh"

namespace eet {
namespace attn {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ------------------------------------------------------------------------------------------------
// Where sequence b's rows live and how many queries it has, shared by both prefill kernels.

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
// Per-(batch, query tile) key range, shared by both prefill kernels.

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
// PTX wrappers (sm_80+).

__device__ __forceinline__ uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// d += a * b for one 16x8x16 tile: a row-major 16x16, b "col" 16x8, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x in one MUFU instruction (about 2 ulp; -inf gives +0). Used for the fp16/bf16 probabilities, which are
// rounded to 16 bits right after; the fp32 kernel keeps the accurate exp2f.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as one 32-bit register of T pairs; `lo` lands in the low half (the lower column index).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// ------------------------------------------------------------------------------------------------
// Tile loads into shared memory: `rows` rows of D elements; rows >= nvalid are zero-filled so that no
// garbage (possibly NaN) reaches a product with a zero probability. With `aligned`, 16-byte cp.async
// (the caller commits and waits); otherwise plain element loads.

template <typename T, int D, int ROWS, int STRIDE, int THREADS>
__device__ __forceinline__ void load_tile(T* smem, const T* gbase, int64_t gstride, int nvalid, bool aligned,
                                          int tid) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kChunks = D / kVec;  // 16-byte chunks per row
  static_assert(D % kVec == 0, "head_dim must be a multiple of 16 bytes");
#pragma unroll 4
  for (int idx = tid; idx < ROWS * kChunks; idx += THREADS) {
    const int r = idx / kChunks;
    const int c = idx - r * kChunks;
    T* dst = smem + r * STRIDE + c * kVec;
    if (r < nvalid) {
      const T* src = gbase + static_cast<int64_t>(r) * gstride + c * kVec;
      if (aligned) {
        cp_async_16(dst, src);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) dst[e] = src[e];
      }
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

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
// Tensor-core kernel (fp16 / bf16).

template <int D>
struct MmaConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMT = D <= 128 ? 2 : 1;       // 16-row m-tiles per warp: reuse of each K/V fragment
  static constexpr int kBr = 16 * kMT * kWarps;      // query rows per block
  static constexpr int kBc = D <= 64 ? 64 : 32;      // keys per tile
  static constexpr int kStride = D + 8;              // smem row stride (elements): conflict-free ldmatrix
  static constexpr bool kQInRegs = D <= 64;          // Q fragments held in registers across the key loop
  static constexpr int kSmemElems = (kBr + 4 * kBc) * kStride;  // Q + 2 stages of K and V
};

template <typename T, int D>
__global__ void __launch_bounds__(MmaConfig<D>::kThreads)
    prefill_mma_kernel(const AttentionParams p, const int aligned_flag) {
  using C = MmaConfig<D>;
  constexpr int kBr = C::kBr, kBc = C::kBc, kStride = C::kStride, kThreads = C::kThreads, MT = C::kMT;
  constexpr int KT = D / 16;   // k-steps of Q K^T
  constexpr int NT = kBc / 8;  // n-tiles (8 keys) of S
  constexpr int DT = D / 8;    // n-tiles (8 dims) of O
  constexpr int PK = kBc / 16; // k-steps of P V
  constexpr int QK = C::kQInRegs ? KT : 1;
  static_assert(D % 16 == 0 && kBc % 16 == 0, "tile shapes");

  extern __shared__ uint4 smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBr * kStride;   // [2][kBc][kStride]
  T* sV = sK + 2 * kBc * kStride;

  const bool aligned = aligned_flag != 0;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;   // row within the 8-row group of an mma fragment
  const int tig = lane & 3;  // thread in group: column pair

  const int num_mblocks = (p.q_len + kBr - 1) / kBr;
  int mb, h, b;
  decode_block(p, num_mblocks, mb, h, b);
  const SeqRows sr = seq_rows(p, b);
  const int m0 = mb * kBr;
  if (m0 >= sr.q_len) return;  // packed: a tile past this sequence's own length
  const int m_end = min(m0 + kBr, sr.q_len);
  const TileRange rg = tile_range(p, sr, b, m0, m_end);
  if (rg.hi <= rg.lo) {
    write_zero_rows<T, D, kThreads>(p, sr.out_row0, h, m0, m_end, tid);
    return;
  }
  const int hk = h / (p.heads_q / p.heads_kv);
  const T* qb = static_cast<const T*>(p.q) + sr.q_base + h * p.q_stride_h + m0 * p.q_stride_s;
  const T* kb = static_cast<const T*>(p.k) + sr.k_base + hk * p.k_stride_h;
  const T* vb = static_cast<const T*>(p.v) + sr.v_base + hk * p.v_stride_h;

  const int num_tiles = (rg.hi - rg.lo + kBc - 1) / kBc;

  // Prologue: Q and the first K/V tile in one cp.async group.
  load_tile<T, D, kBr, kStride, kThreads>(sQ, qb, p.q_stride_s, m_end - m0, aligned, tid);
  {
    const int n0 = rg.lo;
    const int nvalid = min(kBc, rg.hi - n0);
    load_tile<T, D, kBc, kStride, kThreads>(sK, kb + n0 * p.k_stride_s, p.k_stride_s, nvalid, aligned, tid);
    load_tile<T, D, kBc, kStride, kThreads>(sV, vb + n0 * p.v_stride_s, p.v_stride_s, nvalid, aligned, tid);
  }
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  const int wrow0 = warp * 16 * MT;  // this warp's first row within the block tile
  const int row_base = m0 + wrow0;   // ... as a query row index
  const T* sQw = sQ + wrow0 * kStride;

  uint32_t qf[MT][QK][4];
  float o[MT][DT][4];
  float row_max[MT][2], row_sum[MT][2];  // row_sum: this thread's share; summed over the quad at the end
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  for (int t = 0; t < num_tiles; ++t) {
    // Tile t has landed for every thread, and every warp is done with tile t-1, whose buffer the load
    // issued below overwrites.
    cp_async_wait_all();
    __syncthreads();
    if (C::kQInRegs && t == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ks = 0; ks < QK; ++ks)
          ldmatrix_x4(qf[mt][ks], sQw + (mt * 16 + (lane & 15)) * kStride + ks * 16 + (lane >> 4) * 8);
    }
    if (t + 1 < num_tiles) {
      const int n1 = rg.lo + (t + 1) * kBc;
      const int nvalid = min(kBc, rg.hi - n1);
      const int st = (t + 1) & 1;
      load_tile<T, D, kBc, kStride, kThreads>(sK + st * kBc * kStride, kb + n1 * p.k_stride_s, p.k_stride_s,
                                              nvalid, aligned, tid);
      load_tile<T, D, kBc, kStride, kThreads>(sV + st * kBc * kStride, vb + n1 * p.v_stride_s, p.v_stride_s,
                                              nvalid, aligned, tid);
      cp_async_commit();
    }
    const T* sKt = sK + (t & 1) * kBc * kStride;
    const T* sVt = sV + (t & 1) * kBc * kStride;
    const int n0 = rg.lo + t * kBc;

    // S = Q K^T for this warp's rows and the tile's kBc keys; each K fragment serves all MT m-tiles.
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KT; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (C::kQInRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[mt][i] = qf[mt][ks][i];
        } else {
          ldmatrix_x4(a[mt], sQw + (mt * 16 + (lane & 15)) * kStride + ks * 16 + (lane >> 4) * 8);
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bk[4];
        // matrices: (keys +0..7, d +0..7), (keys +0..7, d +8..15), (keys +8..15, d +0..7), (keys +8..15, d +8..15)
        ldmatrix_x4(bk, sKt + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * kStride + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(s[mt][2 * np], a[mt], bk[0], bk[1]);
          mma_16816<T>(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
        }
      }
    }

    // Scale to log2 units and mask. A tile needs the per-element test only if it reaches past kv_end or,
    // causal, past the limit of the block's first row.
    const bool need_mask = (n0 + kBc > rg.ke) ||
                           (p.causal && static_cast<long long>(n0 + kBc - 1) > rg.qo + static_cast<long long>(m0));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = s[mt][nt][e] * scale_log2;
          if (need_mask) {
            const int j = n0 + nt * 8 + 2 * tig + (e & 1);
            const long long i = row_base + mt * 16 + g + (e >> 1) * 8;
            const bool visible = j < rg.ke && (!p.causal || static_cast<long long>(j) <= rg.qo + i);
            v = visible ? v : -INFINITY;
          }
          s[mt][nt][e] = v;
        }
      }
    }

    // Online softmax; rows g (elements 0, 1) and g + 8 (elements 2, 3) of each m-tile. A row's values
    // live in one quad.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_max[mt][r], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;  // no key seen yet: exp2(-inf - 0) = 0
        const float alpha = fast_exp2(row_max[mt][r] - m_use);
        row_max[mt][r] = m_new;
        float rs = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float p0 = fast_exp2(s[mt][nt][2 * r] - m_use);
          const float p1 = fast_exp2(s[mt][nt][2 * r + 1] - m_use);
          s[mt][nt][2 * r] = p0;
          s[mt][nt][2 * r + 1] = p1;
          rs += p0 + p1;
        }
        row_sum[mt][r] = row_sum[mt][r] * alpha + rs;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          o[mt][dt][2 * r] *= alpha;
          o[mt][dt][2 * r + 1] *= alpha;
        }
      }
    }

    // O += P V. The S accumulator layout of n-tiles 2kk, 2kk+1 is the A fragment of k-step kk.
#pragma unroll
    for (int kk = 0; kk < PK; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < DT / 2; ++dp) {
        uint32_t bv[4];
        // matrices: (keys +0..7, d +0..7), (keys +8..15, d +0..7), (keys +0..7, d +8..15), (keys +8..15, d +8..15)
        ldmatrix_x4_trans(bv, sVt + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kStride + dp * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(o[mt][2 * dp], a[mt], bv[0], bv[1]);
          mma_16816<T>(o[mt][2 * dp + 1], a[mt], bv[2], bv[3]);
        }
      }
    }
  }

  // Normalize, stage this warp's rows in its own rows of sQ (only this warp ever reads them), then write
  // full 16-byte chunks of the output rows.
  __syncwarp();
  T* sO = sQ + wrow0 * kStride;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    T* sOm = sO + mt * 16 * kStride;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      *reinterpret_cast<uint32_t*>(sOm + g * kStride + dt * 8 + 2 * tig) =
          pack2<T>(o[mt][dt][0] * inv[0], o[mt][dt][1] * inv[0]);
      *reinterpret_cast<uint32_t*>(sOm + (g + 8) * kStride + dt * 8 + 2 * tig) =
          pack2<T>(o[mt][dt][2] * inv[1], o[mt][dt][3] * inv[1]);
    }
  }
  __syncwarp();
  constexpr int kChunks = D / 8;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int idx = lane; idx < 16 * MT * kChunks; idx += 32) {
    const int r = idx / kChunks;
    const int c = idx - r * kChunks;
    const int m = row_base + r;
    if (m < m_end) {
      const int64_t row = (sr.out_row0 + m) * p.heads_q + h;
      *reinterpret_cast<uint4*>(out + row * D + c * 8) = *reinterpret_cast<const uint4*>(sO + r * kStride + c * 8);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// SIMT kernel (fp32). 4 warps x 8 query rows, 32 keys per tile; lane = key for the scores, lane = head
// dim (strided by 32) for the output accumulator.

template <int D>
struct SimtConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerWarp = 8;
  static constexpr int kBr = kWarps * kRowsPerWarp;
  static constexpr int kBc = 32;
  static constexpr int kKStride = D + 4;  // float4 reads of one row per lane: conflict-free
  static constexpr int kDPerLane = (D + 31) / 32;
  static constexpr int kSmemFloats = kBr * D + kBc * kKStride + kBc * D + kWarps * kRowsPerWarp * kBc;
};

template <int D>
__global__ void __launch_bounds__(SimtConfig<D>::kThreads)
    prefill_simt_kernel(const AttentionParams p, const int aligned_flag) {
  using C = SimtConfig<D>;
  constexpr int kBr = C::kBr, kBc = C::kBc, kThreads = C::kThreads, R = C::kRowsPerWarp;
  constexpr int kKS = C::kKStride, DL = C::kDPerLane;
  static_assert(D % 4 == 0, "head_dim must be a multiple of 4");

  extern __shared__ uint4 smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);  // [kBr][D]
  float* sK = sQ + kBr * D;                         // [kBc][kKS]
  float* sV = sK + kBc * kKS;                       // [kBc][D]
  float* sP = sV + kBc * D;                         // [kWarps][R][kBc]

  const bool aligned = aligned_flag != 0;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;

  const int num_mblocks = (p.q_len + kBr - 1) / kBr;
  int mb, h, b;
  decode_block(p, num_mblocks, mb, h, b);
  const SeqRows sr = seq_rows(p, b);
  const int m0 = mb * kBr;
  if (m0 >= sr.q_len) return;  // packed: a tile past this sequence's own length
  const int m_end = min(m0 + kBr, sr.q_len);
  const TileRange rg = tile_range(p, sr, b, m0, m_end);
  if (rg.hi <= rg.lo) {
    write_zero_rows<float, D, kThreads>(p, sr.out_row0, h, m0, m_end, tid);
    return;
  }
  const int hk = h / (p.heads_q / p.heads_kv);
  const float* qb = static_cast<const float*>(p.q) + sr.q_base + h * p.q_stride_h + m0 * p.q_stride_s;
  const float* kb = static_cast<const float*>(p.k) + sr.k_base + hk * p.k_stride_h;
  const float* vb = static_cast<const float*>(p.v) + sr.v_base + hk * p.v_stride_h;

  // Q tile (rows past q_len are zero).
  for (int idx = tid; idx < kBr * (D / 4); idx += kThreads) {
    const int r = idx / (D / 4);
    const int c = (idx - r * (D / 4)) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (m0 + r < m_end) {
      const float* src = qb + static_cast<int64_t>(r) * p.q_stride_s + c;
      v = aligned ? *reinterpret_cast<const float4*>(src) : make_float4(src[0], src[1], src[2], src[3]);
    }
    *reinterpret_cast<float4*>(sQ + r * D + c) = v;
  }

  const float scale_log2 = p.scale * kLog2e;
  const int row_base = m0 + warp * R;
  const float* sQw = sQ + warp * R * D;
  float* sPw = sP + warp * R * kBc;

  float acc[R][DL];
  float row_max[R], lsum[R];  // lsum: this lane's share of the row sum
#pragma unroll
  for (int r = 0; r < R; ++r) {
    row_max[r] = -INFINITY;
    lsum[r] = 0.f;
#pragma unroll
    for (int c = 0; c < DL; ++c) acc[r][c] = 0.f;
  }

  for (int n0 = rg.lo; n0 < rg.hi; n0 += kBc) {
    const int nvalid = min(kBc, rg.hi - n0);
    __syncthreads();  // previous tile fully consumed (and, first time, nothing to wait for)
    for (int idx = tid; idx < kBc * (D / 4); idx += kThreads) {
      const int r = idx / (D / 4);
      const int c = (idx - r * (D / 4)) * 4;
      float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
      if (r < nvalid) {
        const float* ks = kb + static_cast<int64_t>(n0 + r) * p.k_stride_s + c;
        const float* vs = vb + static_cast<int64_t>(n0 + r) * p.v_stride_s + c;
        if (aligned) {
          kv = *reinterpret_cast<const float4*>(ks);
          vv = *reinterpret_cast<const float4*>(vs);
        } else {
          kv = make_float4(ks[0], ks[1], ks[2], ks[3]);
          vv = make_float4(vs[0], vs[1], vs[2], vs[3]);
        }
      }
      *reinterpret_cast<float4*>(sK + r * kKS + c) = kv;
      *reinterpret_cast<float4*>(sV + r * D + c) = vv;
    }
    __syncthreads();

    // Scores: lane = key n0 + lane, rows row_base + r.
    float s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.f;
#pragma unroll 4
    for (int c = 0; c < D; c += 4) {
      const float4 kv = *reinterpret_cast<const float4*>(sK + lane * kKS + c);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 qv = *reinterpret_cast<const float4*>(sQw + r * D + c);
        s[r] = fmaf(qv.x, kv.x, s[r]);
        s[r] = fmaf(qv.y, kv.y, s[r]);
        s[r] = fmaf(qv.z, kv.z, s[r]);
        s[r] = fmaf(qv.w, kv.w, s[r]);
      }
    }
    const int j = n0 + lane;
    __syncwarp();  // the previous tile's reads of sPw are done
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const long long i = row_base + r;
      const bool visible = j < rg.hi && j < rg.ke && (!p.causal || static_cast<long long>(j) <= rg.qo + i);
      const float v = visible ? s[r] * scale_log2 : -INFINITY;
      float mx = v;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(row_max[r], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(row_max[r] - m_use);
      row_max[r] = m_new;
      const float pr = exp2f(v - m_use);
      lsum[r] = lsum[r] * alpha + pr;
#pragma unroll
      for (int c = 0; c < DL; ++c) acc[r][c] *= alpha;
      sPw[r * kBc + lane] = pr;
    }
    __syncwarp();

    // acc[r][d] += sum_j P[r][j] V[j][d], d = lane + 32 c.
#pragma unroll 2
    for (int jj = 0; jj < kBc; jj += 4) {
      float vv[4][DL];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int c = 0; c < DL; ++c) {
          const int d = lane + 32 * c;
          vv[u][c] = (d < D) ? sV[(jj + u) * D + d] : 0.f;
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 pv = *reinterpret_cast<const float4*>(sPw + r * kBc + jj);
#pragma unroll
        for (int c = 0; c < DL; ++c) {
          acc[r][c] = fmaf(pv.x, vv[0][c], acc[r][c]);
          acc[r][c] = fmaf(pv.y, vv[1][c], acc[r][c]);
          acc[r][c] = fmaf(pv.z, vv[2][c], acc[r][c]);
          acc[r][c] = fmaf(pv.w, vv[3][c], acc[r][c]);
        }
      }
    }
  }

  float* out = static_cast<float*>(p.out);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float l = lsum[r];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int m = row_base + r;
    if (m < m_end) {
      const int64_t row = (sr.out_row0 + m) * p.heads_q + h;
#pragma unroll
      for (int c = 0; c < DL; ++c) {
        const int d = lane + 32 * c;
        if (d < D) out[row * D + d] = acc[r][c] * inv;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host launchers.

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

template <typename T, int D>
cudaError_t launch_prefill_d(const AttentionParams& p, bool aligned, cudaStream_t stream) {
  const int64_t bh = static_cast<int64_t>(p.batch) * p.heads_q;
  if constexpr (sizeof(T) == 4) {
    using C = SimtConfig<D>;
    const int64_t blocks = (p.q_len + C::kBr - 1) / C::kBr * bh;
    return launch_with_smem(prefill_simt_kernel<D>, blocks, C::kThreads, C::kSmemFloats * sizeof(float), p, aligned,
                            stream);
  } else {
    using C = MmaConfig<D>;
    const int64_t blocks = (p.q_len + C::kBr - 1) / C::kBr * bh;
    return launch_with_smem(prefill_mma_kernel<T, D>, blocks, C::kThreads, C::kSmemElems * sizeof(T), p, aligned,
                            stream);
  }
}

template <typename T>
cudaError_t launch_prefill_t(const AttentionParams& p, bool aligned, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_prefill_d<T, 32>(p, aligned, stream);
    case 64: return launch_prefill_d<T, 64>(p, aligned, stream);
    case 80: return launch_prefill_d<T, 80>(p, aligned, stream);
    case 96: return launch_prefill_d<T, 96>(p, aligned, stream);
    case 128: return launch_prefill_d<T, 128>(p, aligned, stream);
    case 256: return launch_prefill_d<T, 256>(p, aligned, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_prefill(DType dtype, const AttentionParams& p, bool aligned, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_prefill_t<T>(p, aligned, stream);
  });
}

}  // namespace attn
}  // namespace eet
