// The split-K decode kernel and its launcher (design in attention_decode.cu): one block handles one key chunk of
// one (batch, kv head) for up to kQPerBlock query vectors. With one split it normalizes and writes the output
// itself; with a cluster of splits the cluster merges the partials over distributed shared memory
// (attention_decode_merge.cuh); on the combine path it writes its partial (max, sum, unnormalized accumulator;
// log2 domain) to the workspace and the launcher puts the combine kernel (attention_decode_combine.cu) behind it.
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
#include "cluster_fit.h"
#include "common.cuh"

namespace eet {
namespace attn {
namespace {

// Grid (q_chunks * heads_kv * batch, splits); with splits > 1 and no workspace, clusters of (1, splits, 1).
// ws_acc / ws_ml: the combine path's partials, nullptr otherwise.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_kernel(const AttentionParams p, const int aligned_flag, const int splits, const int q_chunks,
                  float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  using C = DecodeConfig<T, D>;
  constexpr int kVec = C::kVec, NV = C::kNV, LPR = C::kLPR, VPL = C::kVPL, GROUPS = C::kGroups;
  constexpr int U = kUnroll, Q = kQPerBlock, kStages = C::kStages;

  __shared__ float sm_acc[kWarps][Q][D];  // the warps' partials; then the block's in sm_acc[0] (cluster merge)
  __shared__ float sm_m[kWarps][Q];
  __shared__ float sm_l[kWarps][Q];
  __shared__ float sm_block_m[Q], sm_block_l[Q];  // the block's partial max and sum (cluster merge)

  const bool aligned = aligned_flag != 0;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int grp = lane / LPR;  // which of the warp's rows this lane reads
  const int lig = lane % LPR;  // lane in group: vectors lig, lig + LPR, ...

  const DecodeBlockIndex bi = decode_block_index(p, q_chunks);
  const int qc = bi.qc, hk = bi.hk, b = bi.b, split = bi.split;

  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride_b + hk * p.k_stride_h;
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride_b + hk * p.v_stride_h;

  // Programmatic dependent launch: let the next kernel (the combine, or whatever follows) get scheduled now; it
  // waits for this grid's completion before reading anything. Then wait for the previous kernel: q, k, v and
  // the bounds are its outputs or earlier ones.
  pdl_trigger();
  // Before that wait: L2 prefetch of the rounds the pipeline will ask for first.
  prefetch_chunk_start<T, D, C::kKeysPerWarpStep>(p, kb, vb, split, splits, (kStages - 1) * C::kKeysPerRound);
  pdl_wait();

  const int group_size = p.heads_q / p.heads_kv;
  const int nq_total = group_size * p.q_len;
  const int nq = min(Q, nq_total - qc * Q);  // query vectors of this block, >= 1

  const ChunkRange cr = chunk_range<C::kKeysPerWarpStep>(p, b, split, splits);

  // Query vectors, pre-scaled to log2 units; per query the last key it may see (causal) and its head/row.
  float qv[Q][VPL][kVec];
  int lim[Q];
#pragma unroll
  for (int k = 0; k < Q; ++k) {
    const int qi = qc * Q + k;
    const int hig = k < nq ? qi / p.q_len : 0;
    const int row = k < nq ? qi - hig * p.q_len : 0;
    const int h = hk * group_size + hig;
    const T* qp = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h + row * p.q_stride_s;
    long long l = p.causal ? cr.qo + row : static_cast<long long>(p.kv_len);
    l = l < -1 ? -1 : (l > p.kv_len ? p.kv_len : l);
    lim[k] = static_cast<int>(l);
    const float sc = p.scale * kLog2e;
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      const int vi = lig + v * LPR;
#pragma unroll
      for (int e = 0; e < kVec; ++e) qv[k][v][e] = 0.f;
      if (k < nq && vi < NV) {
        float f[kVec];
        unpack16<T>(load16(qp + vi * kVec, aligned), f);
#pragma unroll
        for (int e = 0; e < kVec; ++e) qv[k][v][e] = f[e] * sc;
      }
    }
  }

  float m[Q], l[Q], acc[Q][VPL][kVec];
#pragma unroll
  for (int k = 0; k < Q; ++k) {
    m[k] = -INFINITY;
    l[k] = 0.f;
#pragma unroll
    for (int v = 0; v < VPL; ++v)
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[k][v][e] = 0.f;
  }

  // Warp w reads rows base + u * GROUPS + grp of round r, base = base0 + r * kKeysPerRound; the round
  // count is warp-uniform. Rounds are prefetched kStages - 1 ahead into this lane's own smem slots.
  extern __shared__ uint4 pipe[];
  uint4* my_slots = pipe + warp * (kUnroll * VPL * 2 * 32) + lane;
  const int base0 = cr.lo + warp * GROUPS * U;
  const int rounds = cr.hi > base0 ? (cr.hi - base0 + C::kKeysPerRound - 1) / C::kKeysPerRound : 0;
  auto issue = [&](int r) {
    if (r < rounds) {
      uint4* st = my_slots + (r % kStages) * C::kSlotsPerStage;
      const int base = base0 + r * C::kKeysPerRound;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int j = base + u * GROUPS + grp;
#pragma unroll
        for (int v = 0; v < VPL; ++v) {
          const int vi = lig + v * LPR;
          if (j < cr.hi && vi < NV) {
            const T* ksrc = kb + static_cast<int64_t>(j) * p.k_stride_s + vi * kVec;
            const T* vsrc = vb + static_cast<int64_t>(j) * p.v_stride_s + vi * kVec;
            uint4* kdst = st + ((u * VPL + v) * 2 + 0) * 32;
            uint4* vdst = st + ((u * VPL + v) * 2 + 1) * 32;
            if (aligned) {
              cp_async_16(kdst, ksrc);
              cp_async_16(vdst, vsrc);
            } else {
              *kdst = load16(ksrc, false);
              *vdst = load16(vsrc, false);
            }
          }
        }
      }
    }
    cp_async_commit();  // possibly empty: keeps one group per round
  };
#pragma unroll
  for (int r = 0; r < kStages - 1; ++r) issue(r);

  for (int r = 0; r < rounds; ++r) {
    issue(r + kStages - 1);  // into the stage consumed in round r - 1
    cp_async_wait<kStages - 1>();  // this lane's copies of round r have landed
    const uint4* st = my_slots + (r % kStages) * C::kSlotsPerStage;
    const int base = base0 + r * C::kKeysPerRound;
    uint4 kr[U][VPL], vr[U][VPL];
    int j[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      j[u] = base + u * GROUPS + grp;
#pragma unroll
      for (int v = 0; v < VPL; ++v) {
        const int vi = lig + v * LPR;
        kr[u][v] = vr[u][v] = make_uint4(0u, 0u, 0u, 0u);  // slots not filled this round hold stale data
        if (j[u] < cr.hi && vi < NV) {
          kr[u][v] = st[((u * VPL + v) * 2 + 0) * 32];
          vr[u][v] = st[((u * VPL + v) * 2 + 1) * 32];
        }
      }
    }
#pragma unroll
    for (int k = 0; k < Q; ++k) {
      if (k >= nq) break;  // block-uniform
      float s[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float d = 0.f;
#pragma unroll
        for (int v = 0; v < VPL; ++v) {
          float f[kVec];
          unpack16<T>(kr[u][v], f);
#pragma unroll
          for (int e = 0; e < kVec; ++e) d = fmaf(qv[k][v][e], f[e], d);
        }
#pragma unroll
        for (int off = LPR / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        s[u] = (j[u] < cr.hi && j[u] <= lim[k]) ? d : -INFINITY;
      }
      float mx = s[0];
#pragma unroll
      for (int u = 1; u < U; ++u) mx = fmaxf(mx, s[u]);
#pragma unroll
      for (int off = LPR; off < 32; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[k], mx);
      const float m_use = softmax_offset(m_new);  // nothing visible yet: exp2(-inf - 0) = 0
      const float alpha = exp2f(m[k] - m_use);
      m[k] = m_new;
      l[k] *= alpha;
#pragma unroll
      for (int v = 0; v < VPL; ++v)
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[k][v][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pu = exp2f(s[u] - m_use);
        l[k] += pu;
#pragma unroll
        for (int v = 0; v < VPL; ++v) {
          float f[kVec];
          unpack16<T>(vr[u][v], f);
#pragma unroll
          for (int e = 0; e < kVec; ++e) acc[k][v][e] = fmaf(pu, f[e], acc[k][v][e]);
        }
      }
    }
  }

  // Sum the lane groups of the warp (they share the warp's running max), then merge the warps.
#pragma unroll
  for (int k = 0; k < Q; ++k) {
    if (k >= nq) break;  // block-uniform: a block of fewer query vectors (q_len 1 without GQA: one) skips the rest
#pragma unroll
    for (int off = LPR; off < 32; off <<= 1) {
      l[k] += __shfl_xor_sync(0xffffffffu, l[k], off);
#pragma unroll
      for (int v = 0; v < VPL; ++v)
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[k][v][e] += __shfl_xor_sync(0xffffffffu, acc[k][v][e], off);
    }
    if (grp == 0) {
#pragma unroll
      for (int v = 0; v < VPL; ++v) {
        const int vi = lig + v * LPR;
        if (vi < NV) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) sm_acc[warp][k][vi * kVec + e] = acc[k][v][e];
        }
      }
    }
    if (lane == 0) {
      sm_m[warp][k] = m[k];
      sm_l[warp][k] = l[k];
    }
  }
  const DecodePartials parts{&sm_acc[0][0][0], Q * D, &sm_m[0][0], &sm_l[0][0], sm_block_m, sm_block_l};
  decode_block_finish<T, D>(p, parts, b, hk, qc, nq, split, splits, ws_acc, ws_ml);
}

template <typename T, int D>
cudaError_t launch_decode_d(const AttentionParams& p, bool aligned, DecodePlan plan, cudaStream_t stream) {
  const int64_t q_chunks = (static_cast<int64_t>(p.heads_q / p.heads_kv) * p.q_len + kQPerBlock - 1) / kQPerBlock;
  const int64_t work = q_chunks * p.heads_kv * p.batch;  // blocks per split (grid x), clusters on the cluster path
  if (work <= 0) return cudaSuccess;
  if (work > 0x7fffffffLL || plan.splits < 1 || plan.splits > kMaxSplits) return cudaErrorInvalidConfiguration;
  // A tensor-core kernel where one exists (16-bit, head_dim 64 / 128, aligned tensors) and pays, else the CUDA-core
  // one; all take the same grid, plan and workspace. Each keeps its own cluster-fit answers (their shared memory
  // differs, so does the number of clusters a device holds). Where tensor cores pay, on the H200 (2026-12-03,
  // docs/decode-attention.md): a block streaming a split of the keys for one query vector ran 1.3-1.6x faster on them,
  // and a block serving several query vectors (GQA, several rows) saves the CUDA-core kernel's per-vector FMAs; but
  // one query vector over a whole context per block (splits = 1: many sequences and heads, bandwidth-bound) ran 3-4%
  // slower (bs8 h25 ctx2048: 34.6 vs 33.3 us), so that case stays on the CUDA-core kernel.
  DecodeKernel kernel = decode_kernel<T, D>;
  size_t smem = DecodeConfig<T, D>::kSmemBytes;
  static ClusterFitCache fit_cache, mma_fit_cache, regs_fit_cache;  // one set per (T, D)
  ClusterFitCache* cache = &fit_cache;
  if constexpr (sizeof(T) == 2) {
    const bool pays = plan.splits > 1 || (p.heads_q / p.heads_kv) * p.q_len > 1;
    size_t mma_smem = 0;
    const bool regs = decode_mma_regs_pays(D, p.kv_len, plan.splits);
    const DecodeKernel mma = aligned && pays
                                 ? (regs ? decode_mma_regs_kernel_for<T>(D, &mma_smem)
                                         : decode_mma_kernel_for<T>(D, &mma_smem))
                                 : nullptr;
    if (mma != nullptr) kernel = mma, smem = mma_smem, cache = regs ? &regs_fit_cache : &mma_fit_cache;
  }
  cudaError_t err =
      cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int64_t rows_total = static_cast<int64_t>(p.batch) * p.q_len * p.heads_q;
  int splits = plan.splits;
  float* ws_acc = nullptr;
  float* ws_ml = nullptr;
  if (plan.combine) {
    if (p.workspace == nullptr) return cudaErrorInvalidValue;
    ws_acc = static_cast<float*>(p.workspace);
    ws_ml = ws_acc + static_cast<int64_t>(splits) * rows_total * D;
  } else if (splits > 1) {
    splits = cluster_width_that_fits(reinterpret_cast<const void*>(kernel), kThreads, smem, splits, work, *cache);
  }
  auto launch = [&](int n) {
    return launch_pdl(kernel, dim3(static_cast<unsigned>(work), static_cast<unsigned>(n)), dim3(kThreads), smem,
                      stream, plan.combine ? 1u : static_cast<unsigned>(n), p, aligned ? 1 : 0, n,
                      static_cast<int>(q_chunks), ws_acc, ws_ml);
  };
  err = launch(splits);
  if (err != cudaSuccess && !plan.combine && splits > kPortableClusterWidth) {
    (void)cudaGetLastError();  // a refused non-portable cluster: the portable width always launches
    splits = kPortableClusterWidth;
    err = launch(splits);
  }
  if (err != cudaSuccess || !plan.combine) return err;
  return launch_decode_combine<T>(ws_acc, ws_ml, static_cast<T*>(p.out), rows_total, D, splits, stream);
}

}  // namespace

template <typename T>
cudaError_t launch_decode_split(const AttentionParams& p, bool aligned, DecodePlan plan, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_decode_d<T, 32>(p, aligned, plan, stream);
    case 64: return launch_decode_d<T, 64>(p, aligned, plan, stream);
    case 80: return launch_decode_d<T, 80>(p, aligned, plan, stream);
    case 96: return launch_decode_d<T, 96>(p, aligned, plan, stream);
    case 128: return launch_decode_d<T, 128>(p, aligned, plan, stream);
    case 256: return launch_decode_d<T, 256>(p, aligned, plan, stream);
    default: return cudaErrorInvalidValue;
  }
}

template cudaError_t launch_decode_split<float>(const AttentionParams& p, bool aligned, DecodePlan plan,
                                                cudaStream_t stream);
template cudaError_t launch_decode_split<__half>(const AttentionParams& p, bool aligned, DecodePlan plan,
                                                 cudaStream_t stream);
template cudaError_t launch_decode_split<__nv_bfloat16>(const AttentionParams& p, bool aligned, DecodePlan plan,
                                                        cudaStream_t stream);

}  // namespace attn
}  // namespace eet
