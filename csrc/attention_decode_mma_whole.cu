// Decode attention on tensor cores with a block's whole chunk in flight at once: every warp issues all of its keys'
// K rows into registers and all of its V rows into shared memory (cp.async) before it computes anything, then S over
// all of them, one softmax (no online rescale), and O^T += V^T P^T from shared memory. fp16 / bf16, head_dim 64, a
// chunk of at most kMaxRounds rounds (512 keys); the launcher checks that (decode_mma_whole_fits, attention_decode.cuh).
//
// Why: at batch 1 every warp streams only 4-8 steps of keys, and the other two tensor-core kernels keep a fraction of
// them in flight (the shared-memory pipeline 4 steps of 8, the register kernel one). A decode-shaped read that issues
// everything at once with register loads is the fastest read measured (scripts/harness_read_paths.cu,
// evaluation/results/decode-floor-h200.md), and the arithmetic then overlaps the loads of the other warps instead of
// standing between a warp's loads.
//
// Layouts: K and Q as the register kernel (attention_decode_mma_regs.cu: lane (g, tig) loads 16 bytes of key row g
// at d = (kp * 4 + tig) * 8 for k-step pair kp, the query from the same places); V and O^T as the shared-memory kernel
// (attention_decode_mma.cu: V rows at stride D + 8, V^T's A fragments by ldmatrix.trans, O^T m-tile mt holding d
// mt * 16 + g, + 8). Warp w takes keys cr.lo + (r * kWarps + w) * 16 .. + 15 in round r, as both other kernels.
//
// Only 16-byte aligned tensors come here (the launcher keeps the others on the CUDA-core kernel's scalar path).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_common.cuh"
#include "attention_decode.cuh"
#include "attention_decode_finish.cuh"
#include "attention_decode_mma_common.cuh"
#include "attention_kernels.h"
#include "attention_ptx.cuh"
#include "common.cuh"

namespace eet {
namespace attn {
namespace {

template <int D>
struct WholeDecodeConfig {
  static constexpr int kKeys = 16;                          // keys per warp per round: one k-step of P V
  static constexpr int kRound = kWarps * kKeys;             // keys a block covers per round
  static constexpr int kRounds = kWholeMaxRounds;           // rounds a chunk may have (attention_decode.cuh)
  static constexpr int kKT = D / 16;                        // k-steps of S = Q K^T
  static constexpr int kKP = D / 32;                        // 16-byte K loads per key row per lane
  static constexpr int kMT = D / 16;                        // m-tiles of O^T
  static constexpr int kStride = D + 8;                     // shared V row stride (elements): conflict-free ldmatrix
  static constexpr int kRoundElems = kKeys * kStride;       // one round's V rows of one warp
  static constexpr int kWarpElems = kRounds * kRoundElems;  // one warp's V rows
  static constexpr size_t kSmemBytes = static_cast<size_t>(kWarps) * kWarpElems * 2;  // 16-bit elements
  static_assert(D == 64, "K of every round is held in registers: 16 x kRounds per lane at head_dim 64");
  static_assert(kQPerBlock <= 8, "query vectors must fit the lanes' rows 0..7 of the A operand");
  static_assert(kQPerBlock * D * 4 <= kWarpElems * 2, "partials must fit a warp's V rows");
};

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Grid and parameters as decode_kernel (attention_decode_split.cu); aligned_flag is always 1 here.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_mma_whole_kernel(const AttentionParams p, const int /*aligned_flag*/, const int splits, const int q_chunks,
                            const bool prefetch, float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  using C = WholeDecodeConfig<D>;
  constexpr int kKeys = C::kKeys, R = C::kRounds, KT = C::kKT, KP = C::kKP, MT = C::kMT, kStride = C::kStride;
  constexpr int Q = kQPerBlock;
  constexpr int kChunks = D / 8;              // 16-byte chunks per V row
  constexpr int kRowsPerIt = 32 / kChunks;    // V rows one warp-wide copy covers
  constexpr int kIt = kKeys / kRowsPerIt;     // V copies per lane per round

  __shared__ float sm_m[kWarps * Q], sm_l[kWarps * Q];
  __shared__ float sm_block_m[Q], sm_block_l[Q];
  extern __shared__ uint4 smem_raw[];
  T* const vbuf = reinterpret_cast<T*>(smem_raw);

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int tig = lane & 3;

  const MmaDecodeBlock<T> blk = mma_decode_block_start<T, D, kKeys>(p, q_chunks, splits, prefetch, R * C::kRound);
  const int qc = blk.bi.qc, hk = blk.bi.hk, b = blk.bi.b, split = blk.bi.split;
  const T* const kb = blk.kb;
  const T* const vb = blk.vb;

  const int group_size = p.heads_q / p.heads_kv;
  const int nq = min(Q, group_size * p.q_len - qc * Q);  // query vectors of this block, >= 1

  // Row g's query vector as A fragments, d permuted as K's (register kernel); rows nq..15 stay zero.
  const bool row_ok = g < nq;
  const int qi = qc * Q + (row_ok ? g : 0);
  const int hig = qi / p.q_len;
  const int q_row = qi - hig * p.q_len;
  uint32_t qf[KT][2];
  {
    const T* qp = static_cast<const T*>(p.q) + b * p.q_stride_b + (hk * group_size + hig) * p.q_stride_h +
                  q_row * p.q_stride_s;
#pragma unroll
    for (int kp = 0; kp < KP; ++kp) {
      uint4 w = make_uint4(0u, 0u, 0u, 0u);
      ldg_nc_v4_keep(w, qp + (kp * 4 + tig) * 8, row_ok);
      qf[2 * kp][0] = w.x, qf[2 * kp][1] = w.y, qf[2 * kp + 1][0] = w.z, qf[2 * kp + 1][1] = w.w;
    }
  }
  const ChunkRange cr = chunk_range<kKeys>(p, b, split, splits);
  const int lim = [&] {  // the last key row g may see
    const long long l = p.causal ? cr.qo + q_row : static_cast<long long>(p.kv_len);
    return static_cast<int>(l < -1 ? -1 : (l > p.kv_len ? p.kv_len : l));
  }();
  const int vis_end = row_ok ? min(cr.hi, lim + 1) : 0;  // padding rows see no key
  const float scale_log2 = p.scale * kLog2e;

  const int base0 = cr.lo + warp * kKeys;
  const int rounds = cr.hi > base0 ? (cr.hi - base0 + C::kRound - 1) / C::kRound : 0;  // warp-uniform
  if (rounds > R) __trap();  // the launcher sends only chunks of <= R rounds: never drop keys silently

  // Every round's K rows into registers (rows past the chunk keep the zeros they start with) ...
  uint4 kr[R][2][KP];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int row = base0 + r * C::kRound + nt * 8 + g;
      const bool ok = r < rounds && row < cr.hi;
      const T* src = kb + static_cast<int64_t>(ok ? row : 0) * p.k_stride_s + tig * 8;
#pragma unroll
      for (int kp = 0; kp < KP; ++kp) {
        kr[r][nt][kp] = make_uint4(0u, 0u, 0u, 0u);
        ldg_nc_v4_keep(kr[r][nt][kp], src + kp * 32, ok);
      }
    }
  }
  // ... and every round's V rows into this warp's shared memory (rows past the chunk zeroed: P is 0 there, and 0
  // times stale bits could be NaN).
  T* const my_v = vbuf + warp * C::kWarpElems;
  const int lane_row = lane / kChunks;
  const int lane_col = (lane % kChunks) * 8;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r < rounds) {
#pragma unroll
      for (int it = 0; it < kIt; ++it) {
        const int rr = lane_row + it * kRowsPerIt;  // row within the round
        const int row = base0 + r * C::kRound + rr;
        T* dst = my_v + r * C::kRoundElems + rr * kStride + lane_col;
        if (row < cr.hi) {
          cp_async_16(dst, vb + static_cast<int64_t>(row) * p.v_stride_s + lane_col);
        } else {
          *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
        }
      }
    }
  }
  cp_async_commit();

  // S = Q K^T for every round: 2R independent accumulators, KT mma each.
  float s[R][2][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) s[r][nt][0] = s[r][nt][1] = s[r][nt][2] = s[r][nt][3] = 0.f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r < rounds) {
#pragma unroll
      for (int ks = 0; ks < KT; ++ks) {
        const uint32_t af[4] = {qf[ks][0], 0u, qf[ks][1], 0u};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const uint4& w = kr[r][nt][ks / 2];
          mma_16816<T>(s[r][nt], af, word_of(w, 2 * (ks % 2)), word_of(w, 2 * (ks % 2) + 1));
        }
      }
    }
  }

  // One softmax over the whole chunk (row g in the 4 lanes of quad g; keys r * kRound + nt * 8 + 2tig + e).
  float mx = -INFINITY;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = base0 + r * C::kRound + nt * 8 + 2 * tig + e;
        const float v = key < vis_end ? s[r][nt][e] * scale_log2 : -INFINITY;  // rounds >= `rounds`: keys >= hi
        s[r][nt][e] = v;
        mx = fmaxf(mx, v);
      }
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  const float m_row = mx;
  const float m_use = softmax_offset(mx);  // nothing visible: exp2(-inf - 0) = 0
  float l_part = 0.f;
  uint32_t ph[R][2], pl[R][2];  // P^T's B fragment of round r in a 16-bit high part and the 16-bit rest
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const float p0 = fast_exp2(s[r][nt][0] - m_use), p1 = fast_exp2(s[r][nt][1] - m_use);
      l_part += p0 + p1;
      ph[r][nt] = pack2<T>(p0, p1);
      const float2 back = unpack2<T>(ph[r][nt]);
      pl[r][nt] = pack2<T>(p0 - back.x, p1 - back.y);
    }

  // O^T += V^T P^T from shared memory, once this lane's copies (and the other lanes', __syncwarp) have landed. Two
  // accumulator sets (even / odd rounds) halve the mma chain.
  cp_async_wait_all();
  __syncwarp();
  float o[2][MT][4];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) o[h][mt][0] = o[h][mt][1] = o[h][mt][2] = o[h][mt][3] = 0.f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r < rounds) {
      const T* sv = my_v + r * C::kRoundElems;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t av[4];
        ldmatrix_x4_trans(av, sv + ((lane >> 4) * 8 + (lane & 7)) * kStride + mt * 16 + ((lane >> 3) & 1) * 8);
        mma_16816<T>(o[r & 1][mt], av, ph[r][0], ph[r][1]);
        mma_16816<T>(o[r & 1][mt], av, pl[r][0], pl[r][1]);
      }
    }
  }
  __syncwarp();  // every lane is past its ldmatrix: the partial may overwrite this warp's V rows

  float l_row = l_part;
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 1);
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 2);
  float* const parts = reinterpret_cast<float*>(vbuf);
  constexpr int kWarpFloats = C::kWarpElems / 2;
#pragma unroll
  for (int c = 0; c < 2; ++c) {  // O^T's query columns 2tig, 2tig + 1
    const int q = 2 * tig + c;
    if (q < nq) {
      float* acc = parts + warp * kWarpFloats + q * D + g;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        acc[mt * 16] = o[0][mt][c] + o[1][mt][c];
        acc[mt * 16 + 8] = o[0][mt][2 + c] + o[1][mt][2 + c];
      }
    }
  }
  if (row_ok && tig == 0) {
    sm_m[warp * Q + g] = m_row;
    sm_l[warp * Q + g] = l_row;
  }
  const DecodePartials partials{parts, kWarpFloats, sm_m, sm_l, sm_block_m, sm_block_l};
  decode_block_finish<T, D>(p, partials, b, hk, qc, nq, split, splits, ws_acc, ws_ml);
}

}  // namespace

template <typename T>
DecodeKernel decode_mma_whole_kernel_for(int head_dim, size_t* smem_bytes) {
  if (head_dim != 64) return nullptr;
  *smem_bytes = WholeDecodeConfig<64>::kSmemBytes;
  return decode_mma_whole_kernel<T, 64>;
}

template DecodeKernel decode_mma_whole_kernel_for<__half>(int head_dim, size_t* smem_bytes);
template DecodeKernel decode_mma_whole_kernel_for<__nv_bfloat16>(int head_dim, size_t* smem_bytes);

}  // namespace attn
}  // namespace eet
