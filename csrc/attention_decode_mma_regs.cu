// Decode attention on tensor cores with K and V loaded straight into the mma operand registers: the grid, splits,
// chunks, softmax (attention_decode_mma_common.cuh) and merge of the shared-memory tensor-core kernel
// (attention_decode_mma.cu), without its cp.async pipeline and ldmatrix. fp16 / bf16, head_dim 128.
//
// Why a second tensor-core kernel: where every warp streams only a few steps of keys (the batch-1 splits), 16-byte
// register loads beat the cp.async copies: a decode-shaped read without arithmetic ran 10-16% faster with them, and
// this kernel ran bs1 h32 d128 ctx2048 / ctx4096 in 13.3 / 21.7 us against the shared-memory kernel's 14.1 / 23.7 (same
// H200, same run; docs/decode-attention.md). But it keeps only one step in flight per warp: ptxas puts every one of
// these loads on one scoreboard, so a consumer waits for all loads issued before it, and a ring of several register
// buffers made each step wait for the whole ring (seen in the SASS; deeper rings and two-buffer batches were slower).
// Over long chunks (2-3 splits: 11+ steps per warp) it then trails the shared-memory kernel by up to 40% (h32 d128
// ctx2048, 2 splits: 20.4 vs 14.6 us), and at head_dim 64 it trails everywhere (h25 ctx2048: 9.1 vs 8.0 us). So it
// is built for head_dim 128 only, and the launcher takes it where a split holds at most kRegsMaxChunk keys
// (attention_decode.cuh).
//
// Operand layout (lane (g, tig) = (lane / 4, lane % 4)): two index permutations make 16 contiguous bytes per lane
// land where the fragments want them.
// - S = Q K^T sums over d, so d may be permuted as long as Q and K agree: for k-step pair kp the lane loads 16 bytes
//   of key row g at d = (kp * 4 + tig) * 8; words 0, 1 are its B fragment of k-step 2kp, words 2, 3 of 2kp + 1, and
//   the query's A fragments come from the same places of the query row.
// - O^T += V^T P^T (attention_decode_mma_common.cuh): V^T's A fragment of m-tile mt holds V at keys 2tig, 2tig + 1
//   (a0, a1) and 2tig + 8, 2tig + 9 (a2, a3) for d rows g (a0, a2) and g + 8 (a1, a3). Row g of m-tile mt is mapped to
//   d = g * D / 8 + 2mt and row g + 8 to the d after it, so each lane needs the D / 8 contiguous values from
//   d = g * D / 8 of its four keys: 16-byte loads, and word mt of two keys' rows gives two fragment registers through
//   one byte permute each (low halves: row g, high halves: row g + 8). O^T's rows map back the same way when the
//   partial is stored.
// Keys past the chunk's end are not read: their registers keep the values of an earlier step of the chunk (rows the
// chunk holds, finite as the cache is where it is visible) or the zeros they start with, so their zero probability
// times them stays zero. Nothing is zeroed per load (zeroing took 64 of a head_dim-128 step's ~355 SASS instructions).
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
struct RegsDecodeConfig {
  static constexpr int kKeys = 16;               // keys per warp step: one k-step of P V, two n-tiles of S
  static constexpr int kNT = kKeys / 8;          // n-tiles of S per step
  static constexpr int kRound = kWarps * kKeys;  // keys a block consumes per round
  static constexpr int kKT = D / 16;             // k-steps of S = Q K^T
  static constexpr int kKP = D / 32;             // k-step pairs: 16-byte K loads per key row per lane
  static constexpr int kAcc = kKT / 2;           // independent S accumulators: halves the mma chain
  static constexpr int kMT = D / 16;             // m-tiles of O^T; also the 32-bit words of a lane's V row values
  static constexpr int kVL = kMT / 4;            // 16-byte V loads per key row per lane (D / 8 values)
  // Shared memory: the warps' partials only (kQPerBlock x D floats each).
  static constexpr size_t kSmemBytes = static_cast<size_t>(kWarps) * kQPerBlock * D * 4;
  static_assert(kKT % 2 == 0 && kVL >= 1 && kMT % 4 == 0, "head_dim must be a multiple of 64");
  static_assert(kQPerBlock <= 8, "query vectors must fit the lanes' rows 0..7 of the A operand");
};

// One step's operands in one lane: K rows nt * 8 + g (16 bytes per k-step pair) and V rows 2tig, 2tig + 1, 2tig + 8,
// 2tig + 9 (D / 8 contiguous values from d = g * D / 8 each) of the step.
template <int D>
struct StepRegs {
  uint4 k[RegsDecodeConfig<D>::kNT][RegsDecodeConfig<D>::kKP];
  uint4 v[4][RegsDecodeConfig<D>::kVL];
};

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Grid and parameters as decode_kernel (attention_decode_split.cu); aligned_flag is always 1 here.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_mma_regs_kernel(const AttentionParams p, const int /*aligned_flag*/, const int splits, const int q_chunks,
                           float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  using C = RegsDecodeConfig<D>;
  constexpr int kKeys = C::kKeys, KT = C::kKT, KP = C::kKP, MT = C::kMT, VL = C::kVL;
  constexpr int A = C::kAcc, Q = kQPerBlock, NT = C::kNT;

  __shared__ float sm_m[kWarps * Q], sm_l[kWarps * Q];
  __shared__ float sm_block_m[Q], sm_block_l[Q];
  extern __shared__ uint4 smem_raw[];
  float* const parts = reinterpret_cast<float*>(smem_raw);  // [warp][query vector][D]

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;   // S's A / C fragment row (g + 8: padding), B fragment column
  const int tig = lane & 3;  // thread in group: column pair of A / C, row pair of B

  const MmaDecodeBlock<T> blk = mma_decode_block_start<T, D, kKeys>(p, q_chunks, splits, C::kRound);
  const int qc = blk.bi.qc, hk = blk.bi.hk, b = blk.bi.b, split = blk.bi.split;
  const T* const kb = blk.kb;
  const T* const vb = blk.vb;

  const int group_size = p.heads_q / p.heads_kv;
  const int nq = min(Q, group_size * p.q_len - qc * Q);  // query vectors of this block, >= 1

  // Row g's query vector as A fragments, d permuted as K's (header); rows nq..15 stay zero. Loaded before every K / V
  // load (asm program order), so the first product does not queue behind them.
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

  float o[MT][4];  // O^T m-tile mt: query columns 2tig, 2tig + 1; d rows g, g + 8 (d mapped as in the header)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;
  float m_row = -INFINITY;  // row g's running max (log2 domain), the same in the 4 lanes of its quad
  float l_part = 0.f;       // this lane's share of row g's sum

  const int base0 = cr.lo + warp * kKeys;
  const int rounds = cr.hi > base0 ? (cr.hi - base0 + C::kRound - 1) / C::kRound : 0;  // warp-uniform

  // This lane's rows within a step, and its K / V addresses of the next step to load: each load() moves them a round
  // (kRound rows) on, so no per-step 64-bit multiply is needed.
  const int v_row[4] = {2 * tig, 2 * tig + 1, 2 * tig + 8, 2 * tig + 9};
  const T* k_next = kb + static_cast<int64_t>(base0 + g) * p.k_stride_s + tig * 8;
  const T* v_next = vb + static_cast<int64_t>(base0) * p.v_stride_s + g * (D / 8);
  const int64_t k_nt = 8 * p.k_stride_s, k_round = C::kRound * p.k_stride_s, v_round = C::kRound * p.v_stride_s;
  int64_t v_off[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) v_off[j] = v_row[j] * p.v_stride_s;
  auto load = [&](StepRegs<D>& st, int r) {
    const int step_base = base0 + r * C::kRound;  // the step's first key
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const bool ok = r < rounds && step_base + nt * 8 + g < cr.hi;
#pragma unroll
      for (int kp = 0; kp < KP; ++kp) ldg_nc_v4_keep(st.k[nt][kp], k_next + nt * k_nt + kp * 32, ok);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool ok = r < rounds && step_base + v_row[j] < cr.hi;
#pragma unroll
      for (int l = 0; l < VL; ++l) ldg_nc_v4_keep(st.v[j][l], v_next + v_off[j] + l * 8, ok);
    }
    k_next += k_round;
    v_next += v_round;
  };

  // One step in flight per warp (header): the next step's loads go out once this step's products are issued.
  StepRegs<D> st;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int kp = 0; kp < KP; ++kp) st.k[nt][kp] = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int l = 0; l < VL; ++l) st.v[j][l] = make_uint4(0u, 0u, 0u, 0u);
  load(st, 0);
  for (int r = 0; r < rounds; ++r) {
    float sa[A][NT][4];
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) sa[a][nt][0] = sa[a][nt][1] = sa[a][nt][2] = sa[a][nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KT; ++ks) {
      const uint32_t af[4] = {qf[ks][0], 0u, qf[ks][1], 0u};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint4& w = st.k[nt][ks / 2];
        mma_16816<T>(sa[ks % A][nt], af, word_of(w, 2 * (ks % 2)), word_of(w, 2 * (ks % 2) + 1));
      }
    }
    uint32_t bh[1][2], bl[1][2];
    const float alpha =
        mma_decode_softmax_step<T>(sa, base0 + r * C::kRound, tig, vis_end, scale_log2, m_row, l_part, bh, bl);
    rescale_ot(o, alpha, tig);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Word mt of each V row: d rows g (low half) and g + 8 (high half) of m-tile mt; a0 / a1 pair keys 2tig,
      // 2tig + 1, a2 / a3 keys 2tig + 8, 2tig + 9 (the lower key in the lower half).
      const uint32_t w0 = word_of(st.v[0][mt / 4], mt % 4), w1 = word_of(st.v[1][mt / 4], mt % 4);
      const uint32_t w2 = word_of(st.v[2][mt / 4], mt % 4), w3 = word_of(st.v[3][mt / 4], mt % 4);
      const uint32_t av[4] = {__byte_perm(w0, w1, 0x5410u), __byte_perm(w0, w1, 0x7632u), __byte_perm(w2, w3, 0x5410u),
                              __byte_perm(w2, w3, 0x7632u)};
      mma_16816<T>(o[mt], av, bh[0][0], bh[0][1]);
      mma_16816<T>(o[mt], av, bl[0][0], bl[0][1]);
    }
    load(st, r + 1);
  }

  // This warp's partial into shared memory: O^T's query columns 2tig, 2tig + 1; row g of m-tile mt at d = g * D / 8 +
  // 2mt, row g + 8 at the d after it.
  float l_row = l_part;
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 1);
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 2);
  constexpr int kWarpFloats = Q * D;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int q = 2 * tig + c;
    if (q < nq) {
      float* acc = parts + warp * kWarpFloats + q * D + g * (D / 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        acc[2 * mt] = o[mt][c];
        acc[2 * mt + 1] = o[mt][2 + c];
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
DecodeKernel decode_mma_regs_kernel_for(int head_dim, size_t* smem_bytes) {
  switch (head_dim) {
    case 128: *smem_bytes = RegsDecodeConfig<128>::kSmemBytes; return decode_mma_regs_kernel<T, 128>;
    default: return nullptr;
  }
}

template DecodeKernel decode_mma_regs_kernel_for<__half>(int head_dim, size_t* smem_bytes);
template DecodeKernel decode_mma_regs_kernel_for<__nv_bfloat16>(int head_dim, size_t* smem_bytes);

}  // namespace attn
}  // namespace eet
