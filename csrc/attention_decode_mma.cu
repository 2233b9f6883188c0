// Decode attention on tensor cores for fp16 / bf16 at head_dim 64 and 128: the blocks, splits, key chunks,
// pipeline discipline and merge of the CUDA-core decode kernel (design in attention_decode.cu), with both products
// on mma.sync m16n8k16 instead of per-lane FMAs and shuffles.
//
// Why: at batch 1 the CUDA-core kernel is bound by its own instruction chain, not by memory. Per 16 keys a warp
// spends ~270 instructions there (unpacking, FMAs, the shuffle reductions of every dot product and of the running
// max) at 1-2 warps per scheduler: on the H200 one split streams only ~23 GB/s per block, ~1400 cycles per
// 64-key round (2026-12-02, docs/decode-attention.md). Here the same 16 keys cost 2 x D/16 mma for S = Q K^T,
// 2 x D/16 for O^T += V^T P^T (P in two 16-bit parts: fp32-like precision; attention_decode_mma_common.cuh), a few
// ldmatrix, and a softmax on the 4 lanes that hold each row.
//
// Tile: the block's query vectors (at most kQPerBlock: the GQA group x query rows) are rows 0..nq-1 of S's 16-row A
// operand and columns 0..nq-1 of O^T's 8; the other rows and columns are zero and their results ignored (the tensor
// cores have the time: what bounds a decode is bytes and instruction latency). Each warp streams its own steps of
// kKeys keys (warp w takes keys cr.lo + (r * kWarps + w) * kKeys .. + kKeys - 1 in round r) through its own
// shared-memory stages with cp.async, kStages - 1 steps ahead; a warp syncs only with itself (__syncwarp after its
// wait, for the other lanes' copies). Rows are padded to D + 8 elements so that ldmatrix is conflict-free. Keys past
// the chunk's end are zero-filled, never left stale: a zero probability times a stale NaN (the stages start
// uninitialized) would still poison O. The warps' partials land in their own (then idle) stages and
// decode_block_finish merges them as for the CUDA-core kernel.
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

// Keys per warp step and pipeline stages per head dim. 32-key steps and 2-4 stages were measured on the H200 and
// moved batch-1 times by at most 3% (docs/measured-and-dropped.md).
constexpr int kMmaKeysPerStep = 16;
constexpr int kMmaStagesD64 = 5;
constexpr int kMmaStagesD128 = 3;

template <int D>
struct MmaDecodeConfig {
  // Keys per warp step: 16 is one k-step of P V; 32 runs two of them (and four n-tiles of S) per pipeline wait,
  // softmax reduction and rescale of O, halving those fixed costs per key.
  static constexpr int kKeys = kMmaKeysPerStep;
  static constexpr int kNT = kKeys / 8;                     // n-tiles of S per step
  static constexpr int kPK = kKeys / 16;                    // k-steps of P V per step
  static constexpr int kRound = kWarps * kKeys;             // keys a block consumes per round
  static constexpr int kStride = D + 8;                     // shared row stride (elements): conflict-free ldmatrix
  static constexpr int kStages = D <= 64 ? kMmaStagesD64 : kMmaStagesD128;
  static constexpr int kStageElems = 2 * kKeys * kStride;   // K rows, then V rows
  static constexpr int kWarpElems = kStages * kStageElems;  // one warp's stages
  static constexpr size_t kSmemBytes = static_cast<size_t>(kWarps) * kWarpElems * 2;  // 16-bit elements
  static constexpr int kKT = D / 16;                        // k-steps of S = Q K^T
  static constexpr int kAcc = kKT / 2;                      // independent S accumulators: halves the mma chain
  static constexpr int kMT = D / 16;                        // m-tiles of O^T (attention_decode_mma_common.cuh)
  static_assert(kKeys == 16 || kKeys == 32, "a warp step is one or two k-steps of P V");
  static_assert(kStages >= 2, "the pipeline needs a stage in flight");
  static_assert(kKT % 2 == 0, "head_dim must be a multiple of 32");
  static_assert(kQPerBlock <= 8, "query vectors must fit the lanes' rows 0..7 of the A operand");
  // The warps' partials (kQPerBlock x D floats) reuse a warp's stages once its loop is done.
  static_assert(kQPerBlock * D * 4 <= kWarpElems * 2, "partials must fit a warp's stages");
};

// Grid and parameters as decode_kernel (attention_decode_split.cu); aligned_flag is always 1 here.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_mma_kernel(const AttentionParams p, const int /*aligned_flag*/, const int splits, const int q_chunks,
                      float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  using C = MmaDecodeConfig<D>;
  constexpr int kKeys = C::kKeys, kStride = C::kStride, kStages = C::kStages, KT = C::kKT, MT = C::kMT;
  constexpr int A = C::kAcc, Q = kQPerBlock, NT = C::kNT, PK = C::kPK;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row

  __shared__ float sm_m[kWarps * Q], sm_l[kWarps * Q];
  __shared__ float sm_block_m[Q], sm_block_l[Q];
  extern __shared__ uint4 smem_raw[];
  T* const pipe = reinterpret_cast<T*>(smem_raw);

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;   // S's A / C fragment row this lane holds (and g + 8, always padding here)
  const int tig = lane & 3;  // thread in group: its column pair

  const MmaDecodeBlock<T> blk =
      mma_decode_block_start<T, D, kKeys>(p, q_chunks, splits, (kStages - 1) * C::kRound);
  const int qc = blk.bi.qc, hk = blk.bi.hk, b = blk.bi.b, split = blk.bi.split;
  const T* const kb = blk.kb;
  const T* const vb = blk.vb;

  const int group_size = p.heads_q / p.heads_kv;
  const int nq = min(Q, group_size * p.q_len - qc * Q);  // query vectors of this block, >= 1

  // Row g's query vector as A fragments (k-step ks: columns ks*16 + 2*tig, +1 and ks*16 + 8 + 2*tig, +1); rows
  // nq..15 stay zero. Loaded first, in program order before every K / V copy (ldg_nc_u32_in_order), so that the first
  // product does not wait for the prologue's copies; the address does not need the sequence bounds.
  const bool row_ok = g < nq;
  const int qi = qc * Q + (row_ok ? g : 0);
  const int hig = qi / p.q_len;
  const int q_row = qi - hig * p.q_len;
  uint32_t qf[KT][2];
  {
    const T* qp = static_cast<const T*>(p.q) + b * p.q_stride_b + (hk * group_size + hig) * p.q_stride_h +
                  q_row * p.q_stride_s;
#pragma unroll
    for (int ks = 0; ks < KT; ++ks) {
      qf[ks][0] = row_ok ? ldg_nc_u32_in_order(qp + ks * 16 + 2 * tig) : 0u;
      qf[ks][1] = row_ok ? ldg_nc_u32_in_order(qp + ks * 16 + 8 + 2 * tig) : 0u;
    }
  }
  const ChunkRange cr = chunk_range<kKeys>(p, b, split, splits);
  // The last key row g may see.
  const int lim = [&] {
    const long long l = p.causal ? cr.qo + q_row : static_cast<long long>(p.kv_len);
    return static_cast<int>(l < -1 ? -1 : (l > p.kv_len ? p.kv_len : l));
  }();
  const float scale_log2 = p.scale * kLog2e;

  float o[MT][4];  // O^T m-tile mt: query columns 2tig, 2tig + 1; dims mt * 16 + g, + 8
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;
  float m_row = -INFINITY;  // row g's running max (log2 domain), the same in the 4 lanes of its quad
  float l_part = 0.f;       // this lane's share of row g's sum

  T* const my_pipe = pipe + warp * C::kWarpElems;
  const int base0 = cr.lo + warp * kKeys;
  const int rounds = cr.hi > base0 ? (cr.hi - base0 + C::kRound - 1) / C::kRound : 0;  // warp-uniform

  // Issue state, advanced one round per issue() call (the calls go round 0, 1, 2, ... in order). Lane L copies
  // 16-byte chunk L % kChunks of rows L / kChunks + it * kRowsPerIt of the step, so its source offsets move by a
  // constant per copy and per round and its destination differs between stages by a constant: no index division,
  // no 64-bit multiply per copy (computed per copy, they took ~140 of a d64 step's ~330 SASS instructions).
  constexpr int kRowsPerIt = 32 / kChunks;               // rows one warp-wide copy covers
  constexpr int kIt = kKeys / kRowsPerIt;                // copies per lane per tensor per step
  static_assert(32 % kChunks == 0 && kKeys % kRowsPerIt == 0, "a warp-wide copy covers whole rows of a step");
  const int lane_row = lane / kChunks;
  T* const dst_lane = my_pipe + lane_row * kStride + (lane % kChunks) * 8;
  const int64_t k_it = kRowsPerIt * p.k_stride_s, v_it = kRowsPerIt * p.v_stride_s;  // source step per copy
  int64_t k_off = static_cast<int64_t>(base0 + lane_row) * p.k_stride_s + (lane % kChunks) * 8;
  int64_t v_off = static_cast<int64_t>(base0 + lane_row) * p.v_stride_s + (lane % kChunks) * 8;
  int issue_r = 0, issue_stage = 0;
  auto issue = [&]() {
    if (issue_r < rounds) {
      T* kd = dst_lane + issue_stage * C::kStageElems;
      T* vd = kd + kKeys * kStride;
      const T* ksrc = kb + k_off;
      const T* vsrc = vb + v_off;
      const int step_base = base0 + issue_r * C::kRound;  // the step's first key
      const bool whole = step_base + kKeys <= cr.hi;       // warp-uniform: every row of the step is in the chunk
#pragma unroll
      for (int it = 0; it < kIt; ++it) {
        if (whole || step_base + lane_row + it * kRowsPerIt < cr.hi) {
          cp_async_16(kd, ksrc);
          cp_async_16(vd, vsrc);
        } else {
          *reinterpret_cast<uint4*>(kd) = make_uint4(0u, 0u, 0u, 0u);
          *reinterpret_cast<uint4*>(vd) = make_uint4(0u, 0u, 0u, 0u);
        }
        kd += kRowsPerIt * kStride, vd += kRowsPerIt * kStride;
        ksrc += k_it, vsrc += v_it;
      }
    }
    cp_async_commit();  // possibly empty: keeps one group per round
    ++issue_r;
    issue_stage = issue_stage + 1 == kStages ? 0 : issue_stage + 1;
    k_off += C::kRound * p.k_stride_s;  // a warp's next step is a block round further
    v_off += C::kRound * p.v_stride_s;
  };
#pragma unroll
  for (int r = 0; r < kStages - 1; ++r) issue();

  // Keys row g may see end before vis_end (the chunk's end, the causal limit); padding rows see none (keys >= 0).
  const int vis_end = row_ok ? min(cr.hi, lim + 1) : 0;
  int stage = 0;  // round r's stage, r % kStages
  for (int r = 0; r < rounds; ++r) {
    __syncwarp();                  // every lane is done with round r - 1's stage, which this issue refills
    issue();                       // round r + kStages - 1
    cp_async_wait<kStages - 1>();  // this lane's copies of round r have landed ...
    __syncwarp();                  // ... and so have the other lanes' (and their zero fills)
    const T* sk = my_pipe + stage * C::kStageElems;
    const T* sv = sk + kKeys * kStride;
    stage = stage + 1 == kStages ? 0 : stage + 1;
    const int base = base0 + r * C::kRound;

    // S = Q K^T over the step's keys (n-tiles of 8 keys), the k-steps spread over A accumulators.
    float sa[A][NT][4];
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) sa[a][nt][0] = sa[a][nt][1] = sa[a][nt][2] = sa[a][nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KT; ++ks) {
      const uint32_t af[4] = {qf[ks][0], 0u, qf[ks][1], 0u};
#pragma unroll
      for (int kh = 0; kh < PK; ++kh) {
        uint32_t bk[4];
        // matrices: (keys 0..7, d +0..7), (keys 0..7, d +8..15), (keys 8..15, d +0..7), (keys 8..15, d +8..15)
        // of the step's 16-key half kh
        ldmatrix_x4(bk, sk + (kh * 16 + (lane >> 4) * 8 + (lane & 7)) * kStride + ks * 16 + ((lane >> 3) & 1) * 8);
        mma_16816<T>(sa[ks % A][2 * kh], af, bk[0], bk[1]);
        mma_16816<T>(sa[ks % A][2 * kh + 1], af, bk[2], bk[3]);
      }
    }

    // Softmax, then O^T += V^T P^T (attention_decode_mma_common.cuh): the probabilities of n-tiles 2kh, 2kh + 1 are
    // P^T's B fragment of k-step kh, in two 16-bit parts; V^T's A fragment of m-tile mt comes transposed from the
    // step's V rows.
    uint32_t bh[PK][2], bl[PK][2];
    const float alpha = mma_decode_softmax_step<T>(sa, base, tig, vis_end, scale_log2, m_row, l_part, bh, bl);
    rescale_ot(o, alpha, tig);
#pragma unroll
    for (int kh = 0; kh < PK; ++kh) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t av[4];
        // matrices, transposed: (keys 0..7, d +0..7), (keys 0..7, d +8..15), (keys 8..15, d +0..7),
        // (keys 8..15, d +8..15) of the step's 16-key half kh and m-tile mt
        ldmatrix_x4_trans(av, sv + (kh * 16 + (lane >> 4) * 8 + (lane & 7)) * kStride + mt * 16 +
                                  ((lane >> 3) & 1) * 8);
        mma_16816<T>(o[mt], av, bh[kh][0], bh[kh][1]);
        mma_16816<T>(o[mt], av, bl[kh][0], bl[kh][1]);
      }
    }
  }

  // This warp's partial into its own stages (its copies are all done, its lanes past their last ldmatrix).
  cp_async_wait_all();
  __syncwarp();
  float l_row = l_part;
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 1);
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 2);
  float* const parts = reinterpret_cast<float*>(pipe);
  constexpr int kWarpFloats = C::kWarpElems / 2;
#pragma unroll
  for (int c = 0; c < 2; ++c) {  // O^T's query columns 2tig, 2tig + 1
    const int q = 2 * tig + c;
    if (q < nq) {
      float* acc = parts + warp * kWarpFloats + q * D + g;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        acc[mt * 16] = o[mt][c];
        acc[mt * 16 + 8] = o[mt][2 + c];
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
DecodeKernel decode_mma_kernel_for(int head_dim, size_t* smem_bytes) {
  switch (head_dim) {
    case 64: *smem_bytes = MmaDecodeConfig<64>::kSmemBytes; return decode_mma_kernel<T, 64>;
    case 128: *smem_bytes = MmaDecodeConfig<128>::kSmemBytes; return decode_mma_kernel<T, 128>;
    default: return nullptr;  // the CUDA-core kernel covers every other head dim
  }
}

template DecodeKernel decode_mma_kernel_for<__half>(int head_dim, size_t* smem_bytes);
template DecodeKernel decode_mma_kernel_for<__nv_bfloat16>(int head_dim, size_t* smem_bytes);

}  // namespace attn
}  // namespace eet
