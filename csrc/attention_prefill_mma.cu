// Prefill attention for fp16 / bf16: flash-attention (online softmax) on tensor cores, over tiles of query rows
// with the mask computed from per-sequence bounds (mask fusion, kernels.h). One block owns a tile of query
// rows of one (batch, query head) and walks the key/value tiles of the visible range only: keys before
// kv_start, from kv_end on, and past the causal limit of the tile's last row are never loaded.
//
// mma.sync m16n8k16 (fp32 accumulate), ldmatrix from padded shared memory, K/V tiles double-buffered with
// cp.async. Each of the 4 warps owns 32 query rows, so that every K/V fragment read from shared memory feeds two
// mma tiles; 16 rows at head_dim 256, and at head_dim 128 when the grid is short (launch_mma_d128). The packed
// (varlen) layout runs the same kernel (attention_prefill.cuh).
//
// Masking inside a tile: score = -inf for an invisible key; the running max is replaced by 0 in the
// exponent while it is still -inf, so a row that has seen no visible key yet accumulates exactly 0 and
// never NaN; at the end a row with a zero sum writes zeros.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_common.cuh"
#include "attention_kernels.h"
#include "attention_prefill.cuh"
#include "attention_ptx.cuh"

namespace eet {
namespace attn {
namespace {

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

// ------------------------------------------------------------------------------------------------
// Tensor-core kernel (fp16 / bf16).

// MT: 16-row m-tiles per warp (the reuse of each K/V fragment); BC: keys per tile.
template <int D, int MT = (D <= 128 ? 2 : 1), int BC = (D <= 64 ? 64 : 32)>
struct MmaConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMT = MT;
  static constexpr int kBr = 16 * kMT * kWarps;      // query rows per block
  static constexpr int kBc = BC;                     // keys per tile
  static constexpr int kStride = D + 8;              // smem row stride (elements): conflict-free ldmatrix
  static constexpr bool kQInRegs = MT * D <= 128;    // Q fragments held in registers across the key loop (32 regs)
  static constexpr int kSmemElems = (kBr + 4 * kBc) * kStride;  // Q + 2 stages of K and V
};

template <typename T, int D, int MT, int BC>
__global__ void __launch_bounds__(MmaConfig<D, MT, BC>::kThreads)
    prefill_mma_kernel(const AttentionParams p, const int aligned_flag) {
  using C = MmaConfig<D, MT, BC>;
  constexpr int kBr = C::kBr, kBc = C::kBc, kStride = C::kStride, kThreads = C::kThreads;
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
        const float m_use = softmax_offset(m_new);  // no key seen yet: exp2(-inf - 0) = 0
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

template <typename T, int D, int MT = MmaConfig<D>::kMT, int BC = MmaConfig<D>::kBc>
cudaError_t launch_mma_d(const AttentionParams& p, bool aligned, cudaStream_t stream) {
  const int64_t bh = static_cast<int64_t>(p.batch) * p.heads_q;
  using C = MmaConfig<D, MT, BC>;
  const int64_t blocks = (p.q_len + C::kBr - 1) / C::kBr * bh;
  return launch_with_smem(prefill_mma_kernel<T, D, MT, BC>, blocks, C::kThreads, C::kSmemElems * sizeof(T), p,
                          aligned, stream);
}

// head_dim 128: 128-row tiles of 32 keys (2 m-tiles per warp, 252 registers: 2 blocks per SM) unless their grid
// fits in one wave of those 2 blocks per SM; then 64-row tiles of 64 keys (1 m-tile per warp, 174 registers),
// twice the blocks, so the longest causal tiles (the last rows, which see every key) are half as long and padded
// rows, which end early, leave fewer SMs idle. H200, 2026-12-03 (each tile shape timed by a probe of commit 36ce0c2;
// docs/measured-and-dropped.md): bs2 h32 L512 left-padded causal 48.2 -> 40.0 us (cuDNN with the mask 49.1),
// unpadded 46.3 -> 46.2; at bs2 L2048 (1024 blocks of 128 rows) the 64-row tiles were 10-35% slower, so longer
// grids keep the 128-row tiles.
constexpr int kWideD128BlocksPerSm = 2;  // the 128-row tile's occupancy (registers)

template <typename T>
cudaError_t launch_mma_d128(const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream) {
  using Wide = MmaConfig<128>;
  const int64_t wide_blocks = (p.q_len + Wide::kBr - 1) / Wide::kBr * static_cast<int64_t>(p.batch) * p.heads_q;
  const int64_t wave = static_cast<int64_t>(kWideD128BlocksPerSm) * (num_sms > 0 ? num_sms : 132);
  if (wide_blocks <= wave) return launch_mma_d<T, 128, 1, 64>(p, aligned, stream);
  return launch_mma_d<T, 128>(p, aligned, stream);
}

}  // namespace

template <typename T>
cudaError_t launch_prefill_mma(const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_mma_d<T, 32>(p, aligned, stream);
    case 64: return launch_mma_d<T, 64>(p, aligned, stream);
    case 80: return launch_mma_d<T, 80>(p, aligned, stream);
    case 96: return launch_mma_d<T, 96>(p, aligned, stream);
    case 128: return launch_mma_d128<T>(p, aligned, num_sms, stream);
    case 256: return launch_mma_d<T, 256>(p, aligned, stream);
    default: return cudaErrorInvalidValue;
  }
}

template cudaError_t launch_prefill_mma<__half>(const AttentionParams& p, bool aligned, int num_sms,
                                                cudaStream_t stream);
template cudaError_t launch_prefill_mma<__nv_bfloat16>(const AttentionParams& p, bool aligned, int num_sms,
                                                        cudaStream_t stream);

}  // namespace attn
}  // namespace eet
