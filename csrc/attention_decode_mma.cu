// Decode attention on tensor cores for fp16 / bf16 at head_dim 64 and 128: the blocks, splits, key chunks and merge
// of the CUDA-core decode kernel (design in attention_decode.cu), with both products on mma.sync m16n8k16 instead
// of per-lane FMAs and shuffles.
//
// Why: at batch 1 the CUDA-core kernel is bound by its own instruction chain, not by memory. Per 16 keys a warp
// spends ~270 instructions there (unpacking, FMAs, the shuffle reductions of every dot product and of the running
// max) at 1-2 warps per scheduler: on the H200 one split streams only ~23 GB/s per block, ~1400 cycles per
// 64-key round (scripts/sweep_decode.py, 2026-12-02). Here the same 16 keys cost 2 x D/16 mma for S = Q K^T,
// 2 x D/8 for O += P V (P in two 16-bit parts: fp32-like precision) and a softmax on the 4 lanes that hold each row.
//
// Tile: the block's query vectors (at most kQPerBlock: the GQA group x query rows) are rows 0..nq-1 of the
// 16-row A operand; the other rows are zero and their results ignored (the tensor cores have the time: what bounds
// a decode is bytes and instruction latency). Each warp streams its own steps of kKeys keys (warp w takes keys
// cr.lo + (r * kWarps + w) * kKeys .. + kKeys - 1 in round r).
//
// Loads: straight from global memory into the mma operand registers, 16 bytes per load, kAhead steps in flight per
// warp (register buffers), no shared memory and no ldmatrix. On the H200 a decode-shaped read (blocks of 4 warps, two
// per SM, 4 KB steps, 4 in flight) ran 10-16% faster with 16-byte register loads than with the cp.async copies into
// shared memory this kernel used before (scripts/harness_read_paths.cu, logs/2026-12-04b: 13.1 / 26.2 MB over 200
// blocks in clusters of 8: 5.7 / 9.4 us against 6.5 / 11.0). Two index permutations make 16 contiguous bytes per lane
// land where the fragments want them:
// - S = Q K^T sums over d, so d may be permuted as long as Q and K agree: lane (g, tig) of k-step pair kp loads
//   16 bytes of key row g at d = (kp * 4 + tig) * 8; its words 0, 1 are the B fragment of k-step 2 kp and words 2, 3
//   that of k-step 2 kp + 1 (the query fragments come from the same places of the query row).
// - O += P V: the B fragment of d-tile dt holds, in lane (g, tig), V at keys 2tig, 2tig + 1 (b0) and 2tig + 8,
//   2tig + 9 (b1) for one column n = g. Mapping column n of d-tile dt to d = n * D / 8 + dt, each lane needs the D / 8
//   contiguous values d = g * D / 8 .. of its four keys: 16-byte loads, and one byte permute per fragment register
//   pairs two keys' values. The output fragment's (n, dt) maps back the same way.
// Keys past the chunk's end are not read; their registers are zero: a zero probability times a stale NaN would still
// poison O. The warps' partials land in shared memory and decode_block_finish merges them as for the CUDA-core
// kernel.
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
#include "attention_kernels.h"
#include "attention_ptx.cuh"
#include "common.cuh"

namespace eet {
namespace attn {
namespace {

// Steps per batch (the loads in flight while a batch computes) per head dim. Compile-time overrides
// (-DEET_DECODE_MMA_BATCH_D64=1 ...) exist for scripts/harness_decode.cu, which times block shapes the kernel fixes at
// compile time.
#ifndef EET_DECODE_MMA_BATCH_D64
#define EET_DECODE_MMA_BATCH_D64 2
#endif
#ifndef EET_DECODE_MMA_BATCH_D128
#define EET_DECODE_MMA_BATCH_D128 1
#endif

template <int D>
struct MmaDecodeConfig {
  static constexpr int kKeys = 16;                  // keys per warp step: one k-step of P V, two n-tiles of S
  static constexpr int kNT = kKeys / 8;             // n-tiles of S per step
  static constexpr int kRound = kWarps * kKeys;     // keys a block consumes per round
  static constexpr int kBatch = D <= 64 ? EET_DECODE_MMA_BATCH_D64 : EET_DECODE_MMA_BATCH_D128;
  static constexpr int kKT = D / 16;                // k-steps of S = Q K^T
  static constexpr int kKP = D / 32;                // k-step pairs: 16-byte K loads per key row per lane
  static constexpr int kAcc = kKT / 2;              // independent S accumulators: halves the mma chain
  static constexpr int kDT = D / 8;                 // d-tiles of O; also the contiguous d values per V row per lane
  static constexpr int kVL = kDT / 8;               // 16-byte V loads per key row per lane
  // Shared memory: the warps' partials only (kQPerBlock x D floats each).
  static constexpr size_t kSmemBytes = static_cast<size_t>(kWarps) * kQPerBlock * D * 4;
  static_assert(kKT % 2 == 0, "head_dim must be a multiple of 32");
  static_assert(kVL >= 1, "head_dim must be a multiple of 64");
  static_assert(kBatch >= 1, "a batch is at least one step");
  static_assert(kQPerBlock <= 8, "query vectors must fit the lanes' rows 0..7 of the A operand");
};

// One batch's operands in one lane: of each of its kBatch steps, K rows nt * 8 + g (16 bytes per k-step pair) and
// V rows 2tig, 2tig + 1, 2tig + 8, 2tig + 9 (D / 8 contiguous values each).
template <int D>
struct KRegs {
  uint4 k[MmaDecodeConfig<D>::kBatch][MmaDecodeConfig<D>::kNT][MmaDecodeConfig<D>::kKP];
};
template <int D>
struct VRegs {
  uint4 v[MmaDecodeConfig<D>::kBatch][4][MmaDecodeConfig<D>::kVL];
};

// 16 bytes from global memory, or zeros where ok is false (the address is then not read). asm volatile, so the loads
// stay in program order relative to the mma statements: issued early, consumed a few steps later.
__device__ __forceinline__ uint4 ldg_nc_v4_or_zero(const void* gmem, bool ok) {
  uint4 r;
  asm volatile(
      "{\n .reg .pred q;\n setp.ne.b32 q, %5, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n"
      " mov.b32 %3, 0;\n @q ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n}\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(gmem), "r"(static_cast<int>(ok)));
  return r;
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// Grid and parameters as decode_kernel (attention_decode_split.cu); aligned_flag is always 1 here.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_mma_kernel(const AttentionParams p, const int /*aligned_flag*/, const int splits, const int q_chunks,
                      const bool prefetch, float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  using C = MmaDecodeConfig<D>;
  constexpr int kKeys = C::kKeys, KT = C::kKT, KP = C::kKP, DT = C::kDT, VL = C::kVL;
  constexpr int A = C::kAcc, Q = kQPerBlock, NT = C::kNT;

  __shared__ float sm_m[kWarps * Q], sm_l[kWarps * Q];
  __shared__ float sm_block_m[Q], sm_block_l[Q];
  extern __shared__ uint4 smem_raw[];
  float* const parts = reinterpret_cast<float*>(smem_raw);  // [warp][query vector][D]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;   // the A / C fragment row this lane holds (and g + 8, always padding here); B column
  const int tig = lane & 3;  // thread in group: its column pair (A, C) or row pair (B)

  const DecodeBlockIndex bi = decode_block_index(p, q_chunks);
  const int qc = bi.qc, hk = bi.hk, b = bi.b, split = bi.split;

  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride_b + hk * p.k_stride_h;
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride_b + hk * p.v_stride_h;

  pdl_trigger();  // as decode_kernel: dependents may be scheduled; they wait for this grid in their pdl_wait
  if (prefetch) prefetch_chunk_start<T, D, kKeys>(p, kb, vb, split, splits, 2 * C::kBatch * C::kRound);
  pdl_wait();

  const int group_size = p.heads_q / p.heads_kv;
  const int nq = min(Q, group_size * p.q_len - qc * Q);  // query vectors of this block, >= 1

  // Row g's query vector as A fragments, d permuted as K's (header): k-step 2kp + h takes words 2h, 2h + 1 of the 16
  // bytes at d = (kp * 4 + tig) * 8. Rows nq..15 stay zero. Loaded before every K / V load (program order of the asm
  // loads), so that the first product does not wait behind them; the address does not need the sequence bounds.
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
      const uint4 w = ldg_nc_v4_or_zero(qp + (kp * 4 + tig) * 8, row_ok);
      qf[2 * kp][0] = w.x, qf[2 * kp][1] = w.y, qf[2 * kp + 1][0] = w.z, qf[2 * kp + 1][1] = w.w;
    }
  }
  const ChunkRange cr = chunk_range<kKeys>(p, b, split, splits);
  // The last key row g may see.
  const int lim = [&] {
    const long long l = p.causal ? cr.qo + q_row : static_cast<long long>(p.kv_len);
    return static_cast<int>(l < -1 ? -1 : (l > p.kv_len ? p.kv_len : l));
  }();
  const float scale_log2 = p.scale * kLog2e;

  float o[DT][4];  // elements 0, 1: row g, columns 2tig, 2tig + 1 of d-tile dt (d mapped as in the header)
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m_row = -INFINITY;  // row g's running max (log2 domain), the same in the 4 lanes of its quad
  float l_part = 0.f;       // this lane's share of row g's sum

  const int base0 = cr.lo + warp * kKeys;
  const int rounds = cr.hi > base0 ? (cr.hi - base0 + C::kRound - 1) / C::kRound : 0;  // warp-uniform

  // This lane's rows within a step (K: nt * 8 + g; V: 2tig, 2tig + 1, 2tig + 8, 2tig + 9) and their element offsets
  // at round 0; a round moves every offset by kRound rows (no index multiply per load).
  const int v_row[4] = {2 * tig, 2 * tig + 1, 2 * tig + 8, 2 * tig + 9};
  const T* k_lane = kb + static_cast<int64_t>(base0 + g) * p.k_stride_s + tig * 8;
  const T* v_lane = vb + static_cast<int64_t>(base0) * p.v_stride_s + g * DT;
  const int64_t k_nt = 8 * p.k_stride_s, k_round = C::kRound * p.k_stride_s, v_round = C::kRound * p.v_stride_s;
  int64_t v_off[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) v_off[j] = v_row[j] * p.v_stride_s;
  auto load_k = [&](KRegs<D>& kr, int batch) {
#pragma unroll
    for (int i = 0; i < C::kBatch; ++i) {
      const int r = batch * C::kBatch + i;
      const int step_base = base0 + r * C::kRound;  // the step's first key
      const T* kp_row = k_lane + r * k_round;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const bool ok = r < rounds && step_base + nt * 8 + g < cr.hi;
#pragma unroll
        for (int kp = 0; kp < KP; ++kp) kr.k[i][nt][kp] = ldg_nc_v4_or_zero(kp_row + nt * k_nt + kp * 32, ok);
      }
    }
  };
  auto load_v = [&](VRegs<D>& vr, int batch) {
#pragma unroll
    for (int i = 0; i < C::kBatch; ++i) {
      const int r = batch * C::kBatch + i;
      const int step_base = base0 + r * C::kRound;
      const T* vp_row = v_lane + r * v_round;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = r < rounds && step_base + v_row[j] < cr.hi;
#pragma unroll
        for (int l = 0; l < VL; ++l) vr.v[i][j][l] = ldg_nc_v4_or_zero(vp_row + v_off[j] + l * 8, ok);
      }
    }
  };

  // Keys row g may see end before vis_end (the chunk's end, the causal limit); padding rows see none (keys >= 0).
  const int vis_end = row_ok ? min(cr.hi, lim + 1) : 0;
  // Softmax and P V of round r, whose S is sa and whose V rows are vv.
  auto step = [&](const float (&sa)[A][NT][4], const uint4 (&vv)[4][VL], int r) {
    const int base = base0 + r * C::kRound;
    // Row g: scale to log2 units, mask, online softmax over the quad's 4 lanes (2 keys per lane per n-tile).
    float s[NT][2];
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float v = sa[0][nt][e];
#pragma unroll
        for (int a = 1; a < A; ++a) v += sa[a][nt][e];
        s[nt][e] = base + nt * 8 + 2 * tig + e < vis_end ? v * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[nt][e]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_row, mx);
    const float m_use = softmax_offset(m_new);  // nothing visible yet: exp2(-inf - 0) = 0
    const float alpha = fast_exp2(m_row - m_use);
    m_row = m_new;
    float rs = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = fast_exp2(s[nt][e] - m_use);
        rs += s[nt][e];
      }
    }
    l_part = l_part * alpha + rs;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[dt][0] *= alpha;
      o[dt][1] *= alpha;
    }

    // O += P V: the probabilities of n-tiles 0, 1 are the A fragment of the step's one k-step (rows 8..15 zero),
    // split into a 16-bit high part and the 16-bit rest, two mma each, so that P keeps ~fp32 precision as in the
    // CUDA-core kernel. One rounding of P to fp16 (what flash does) was measured on the H200 to flip greedy tokens of
    // small fp16 Llama / Mistral models more often than HF's eager path does (29 of 32 prompts agreeing with sdpa
    // against eager's 31, test_generic_greedy_agreement); the extra mma cost little where latency, not the tensor
    // cores, bounds the kernel.
    const uint32_t hi0 = pack2<T>(s[0][0], s[0][1]), hi1 = pack2<T>(s[1][0], s[1][1]);
    const float2 back0 = unpack2<T>(hi0), back1 = unpack2<T>(hi1);
    const uint32_t ph[4] = {hi0, 0u, hi1, 0u};
    const uint32_t pl[4] = {pack2<T>(s[0][0] - back0.x, s[0][1] - back0.y), 0u,
                            pack2<T>(s[1][0] - back1.x, s[1][1] - back1.y), 0u};
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      // Column g of d-tile dt is d = g * DT + dt: element dt of each of the lane's four V rows. b0 pairs keys 2tig,
      // 2tig + 1, b1 keys 2tig + 8, 2tig + 9 (the lower key in the lower half).
      const int wi = (dt % 8) / 2;
      const unsigned sel = dt % 2 == 0 ? 0x5410u : 0x7632u;
      const uint32_t b0 = __byte_perm(word_of(vv[0][dt / 8], wi), word_of(vv[1][dt / 8], wi), sel);
      const uint32_t b1 = __byte_perm(word_of(vv[2][dt / 8], wi), word_of(vv[3][dt / 8], wi), sel);
      mma_16816<T>(o[dt], ph, b0, b1);
      mma_16816<T>(o[dt], pl, b0, b1);
    }
  };

  // One batch: S for its steps (the first product waits for the batch's loads, and for nothing issued later: the
  // loads share one scoreboard, so the next batch's loads go out only after this wait), then the next batch's loads
  // into kr (free now) and v_next, then softmax and P V per step while they are in flight.
  auto process = [&](KRegs<D>& kr, const VRegs<D>& v_cur, VRegs<D>& v_next, int batch) {
    float sa[C::kBatch][A][NT][4];
#pragma unroll
    for (int i = 0; i < C::kBatch; ++i) {
#pragma unroll
      for (int a = 0; a < A; ++a)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) sa[i][a][nt][0] = sa[i][a][nt][1] = sa[i][a][nt][2] = sa[i][a][nt][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KT; ++ks) {
        const uint32_t af[4] = {qf[ks][0], 0u, qf[ks][1], 0u};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint4& w = kr.k[i][nt][ks / 2];
          mma_16816<T>(sa[i][ks % A][nt], af, word_of(w, 2 * (ks % 2)), word_of(w, 2 * (ks % 2) + 1));
        }
      }
    }
    load_k(kr, batch + 1);
    load_v(v_next, batch + 1);
#pragma unroll
    for (int i = 0; i < C::kBatch; ++i) {
      const int r = batch * C::kBatch + i;
      if (r < rounds) step(sa[i], v_cur.v[i], r);  // warp-uniform
    }
  };
  // Batch 0's loads, then two batches per iteration so that the V buffers alternate by name (registers): while a
  // batch computes its softmax and P V, the next batch's K and V loads are in flight.
  const int batches = (rounds + C::kBatch - 1) / C::kBatch;
  KRegs<D> kr;
  VRegs<D> v0, v1;
  load_k(kr, 0);
  load_v(v0, 0);
  for (int bt = 0; bt < batches; bt += 2) {
    process(kr, v0, v1, bt);
    if (bt + 1 < batches) process(kr, v1, v0, bt + 1);
  }

  // This warp's partial into shared memory (d of column n, d-tile dt: n * DT + dt).
  float l_row = l_part;
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 1);
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 2);
  constexpr int kWarpFloats = Q * D;
  if (row_ok) {
    float* acc = parts + warp * kWarpFloats + g * D;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      acc[(2 * tig) * DT + dt] = o[dt][0];
      acc[(2 * tig + 1) * DT + dt] = o[dt][1];
    }
    if (tig == 0) {
      sm_m[warp * Q + g] = m_row;
      sm_l[warp * Q + g] = l_row;
    }
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
