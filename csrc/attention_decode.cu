// Decode attention (few query rows, long key range): split-K "flash-decoding" with the mask computed from
// per-sequence bounds (mask fusion, kernels.h).
//
// The key range that any query row of sequence b may see, [kv_start, min(kv_end, q_offset + q_len)), is
// cut into `splits` equal chunks. The count depends on shapes only (so it is fixed on the host and the
// launch is graph-capture safe): as many as fill one wave of resident blocks (2 per SM), no chunk under
// kMinChunk keys. One block handles one chunk of one (batch, kv head) for a group of up to kQPerBlock
// query vectors (query heads of the GQA group x query rows), so K and V are read once for all of them.
// Each of the block's 4 warps streams its own rows of the chunk: a row is read by LPR lanes with 16-byte
// cp.async copies into per-lane shared-memory slots, kStages - 1 rounds ahead (each lane reads back only
// what it copied itself, so no barrier is involved); the warp keeps an online softmax in fp32 with a
// warp-uniform running max; the warps merge through shared memory at the end. With one split the block
// normalizes and writes the output itself; otherwise it writes its partial (max, sum, unnormalized
// accumulator; log2 domain) to the workspace and a combine kernel, launched as a programmatic dependent
// (its launch overlaps this kernel), merges them.
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
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kQPerBlock = 4;   // query vectors per block (more go to further blocks of the grid)
constexpr int kUnroll = 4;      // key rows per lane group per round
constexpr int kMinChunk = 256;  // keys: a split shorter than this is not worth a block
constexpr int kBlocksPerSm = 2; // decode_kernel's occupancy (registers and pipeline smem), all dtypes / dims
constexpr int kWaves = 1;       // split so that the grid fills this many waves of resident blocks
constexpr int kMaxSplits = 128;

constexpr int pow2_ceil(int n) { return n <= 1 ? 1 : 2 * pow2_ceil((n + 1) / 2); }

template <typename T, int D>
struct DecodeConfig {
  static constexpr int kVec = 16 / sizeof(T);          // elements per 16-byte vector
  static constexpr int kNV = D / kVec;                 // vectors per row
  static constexpr int kLPR = pow2_ceil(kNV) < 32 ? pow2_ceil(kNV) : 32;  // lanes per row
  static constexpr int kVPL = (kNV + kLPR - 1) / kLPR; // vectors per lane
  static constexpr int kGroups = 32 / kLPR;            // rows a warp reads at once
  static constexpr int kKeysPerRound = kWarps * kGroups * kUnroll;  // keys a block consumes per round
  // cp.async pipeline depth: kStages - 1 rounds (4 KB each per warp with one vector per lane) in flight.
  static constexpr int kStages = kVPL == 1 ? 5 : 3;
  // Pipeline buffers: [stage][warp][u][v][k or v][lane] 16-byte slots; each lane reads back only the slots
  // it filled itself, so no barrier is needed, only cp.async.wait_group.
  static constexpr int kSlotsPerStage = kWarps * kUnroll * kVPL * 2 * 32;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kStages) * kSlotsPerStage * 16;
  static_assert(D % kVec == 0, "head_dim must be a multiple of 16 bytes");
};

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(smem))),
               "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

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
  // Chunk length rounded up to whole block rounds; trailing splits may get nothing.
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

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_kernel(const AttentionParams p, const int aligned_flag, const int splits, const int q_chunks,
                  float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
  using C = DecodeConfig<T, D>;
  constexpr int kVec = C::kVec, NV = C::kNV, LPR = C::kLPR, VPL = C::kVPL, GROUPS = C::kGroups;
  constexpr int U = kUnroll, Q = kQPerBlock, kStages = C::kStages;

  __shared__ float sm_acc[kWarps][Q][D];
  __shared__ float sm_m[kWarps][Q];
  __shared__ float sm_l[kWarps][Q];

  // Let the combine kernel (a programmatic dependent launch) get scheduled now; it waits for this grid's
  // completion before reading anything.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");

  const bool aligned = aligned_flag != 0;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int grp = lane / LPR;  // which of the warp's rows this lane reads
  const int lig = lane % LPR;  // lane in group: vectors lig, lig + LPR, ...

  // Block -> (query chunk, split, kv head, batch); query chunks of one split are adjacent so that they
  // read the same K/V while it is in L2.
  int64_t idx = blockIdx.x;
  const int qc = static_cast<int>(idx % q_chunks);
  idx /= q_chunks;
  const int split = static_cast<int>(idx % splits);
  idx /= splits;
  const int hk = static_cast<int>(idx % p.heads_kv);
  const int b = static_cast<int>(idx / p.heads_kv);

  const int group_size = p.heads_q / p.heads_kv;
  const int nq_total = group_size * p.q_len;
  const int nq = min(Q, nq_total - qc * Q);  // query vectors of this block, >= 1

  const ChunkRange cr = chunk_range<C::kKeysPerRound>(p, b, split, splits);

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

  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride_b + hk * p.k_stride_h;
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride_b + hk * p.v_stride_h;

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
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: exp2(-inf - 0) = 0
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
  __syncthreads();

  const int64_t rows_total = static_cast<int64_t>(p.batch) * p.q_len * p.heads_q;
  for (int i = tid; i < nq * D; i += kThreads) {
    const int k = i / D;
    const int d = i - k * D;
    float mmax = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mmax = fmaxf(mmax, sm_m[w][k]);
    float lsum = 0.f, a = 0.f;
    if (mmax != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float mw = sm_m[w][k];
        const float f = mw == -INFINITY ? 0.f : exp2f(mw - mmax);
        lsum += sm_l[w][k] * f;
        a += sm_acc[w][k][d] * f;
      }
    }
    const int qi = qc * Q + k;
    const int hig = qi / p.q_len;
    const int row = qi - hig * p.q_len;
    const int h = hk * group_size + hig;
    const int64_t o = (static_cast<int64_t>(b) * p.q_len + row) * p.heads_q + h;  // output row
    if (splits == 1) {
      static_cast<T*>(p.out)[o * D + d] = from_float<T>(lsum > 0.f ? a / lsum : 0.f);
    } else {
      const int64_t w = split * rows_total + o;
      ws_acc[w * D + d] = a;
      if (d == 0) {
        ws_ml[w] = mmax;
        ws_ml[splits * rows_total + w] = lsum;
      }
    }
  }
}

// Merge the splits' partials of each output row: one warp per row. Launched as a programmatic dependent
// of decode_kernel where supported: it may start early and waits here for the partials.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml, T* __restrict__ out,
                   int64_t rows_total, int head_dim, int splits) {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");  // no-op without a programmatic dependency
  __shared__ float weights[kWarps][kMaxSplits];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (o >= rows_total) return;  // warp-uniform; no block barrier below
  const float* ms = ws_ml;
  const float* ls = ws_ml + splits * rows_total;
  float mmax = -INFINITY;
  for (int s = lane; s < splits; s += 32) mmax = fmaxf(mmax, ms[s * rows_total + o]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mmax = fmaxf(mmax, __shfl_xor_sync(0xffffffffu, mmax, off));
  T* dst = out + o * head_dim;
  if (mmax == -INFINITY) {  // no split saw a visible key
    for (int d = lane; d < head_dim; d += 32) dst[d] = from_float<T>(0.f);
    return;
  }
  // Weight of split s: 2^(m_s - max), 0 for a split without a visible key.
  float lsum = 0.f;
  for (int s = lane; s < splits; s += 32) {
    const float ml = ms[s * rows_total + o];
    const float w = ml == -INFINITY ? 0.f : exp2f(ml - mmax);
    weights[warp][s] = w;
    lsum += ls[s * rows_total + o] * w;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) lsum += __shfl_xor_sync(0xffffffffu, lsum, off);
  __syncwarp();
  const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
  for (int d = lane; d < head_dim; d += 32) {
    float a = 0.f;
#pragma unroll 4
    for (int s = 0; s < splits; ++s) a += ws_acc[(s * rows_total + o) * head_dim + d] * weights[warp][s];
    dst[d] = from_float<T>(a * inv);
  }
}

template <typename T, int D>
cudaError_t launch_decode_d(const AttentionParams& p, bool aligned, int splits, cudaStream_t stream) {
  const int64_t q_chunks = (static_cast<int64_t>(p.heads_q / p.heads_kv) * p.q_len + kQPerBlock - 1) / kQPerBlock;
  const int64_t blocks = q_chunks * splits * p.heads_kv * p.batch;
  if (blocks <= 0) return cudaSuccess;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const int64_t rows_total = static_cast<int64_t>(p.batch) * p.q_len * p.heads_q;
  float* ws_acc = nullptr;
  float* ws_ml = nullptr;
  if (splits > 1) {
    if (p.workspace == nullptr) return cudaErrorInvalidValue;
    ws_acc = static_cast<float*>(p.workspace);
    ws_ml = ws_acc + static_cast<int64_t>(splits) * rows_total * D;
  }
  constexpr size_t smem = DecodeConfig<T, D>::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(decode_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  decode_kernel<T, D><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(p, aligned ? 1 : 0, splits,
                                                                                static_cast<int>(q_chunks), ws_acc,
                                                                                ws_ml);
  err = cudaGetLastError();
  if (err != cudaSuccess || splits == 1) return err;
  const int64_t cblocks = (rows_total + kWarps - 1) / kWarps;
  if (cblocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  // Programmatic dependent launch: the combine grid is launched while decode_kernel runs and waits in
  // griddepcontrol.wait for its completion, which hides the launch gap. Plain launch if refused.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(cblocks));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  T* out = static_cast<T*>(p.out);
  const int head_dim = D;
  err = cudaLaunchKernelEx(&cfg, combine_kernel<T>, static_cast<const float*>(ws_acc), static_cast<const float*>(ws_ml),
                           out, rows_total, head_dim, splits);
  if (err == cudaSuccess) return cudaGetLastError();
  (void)cudaGetLastError();  // clear the refusal, launch plainly
  combine_kernel<T><<<static_cast<unsigned>(cblocks), kThreads, 0, stream>>>(ws_acc, ws_ml, out, rows_total, D, splits);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode_t(const AttentionParams& p, bool aligned, int splits, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_decode_d<T, 32>(p, aligned, splits, stream);
    case 64: return launch_decode_d<T, 64>(p, aligned, splits, stream);
    case 80: return launch_decode_d<T, 80>(p, aligned, splits, stream);
    case 96: return launch_decode_d<T, 96>(p, aligned, splits, stream);
    case 128: return launch_decode_d<T, 128>(p, aligned, splits, stream);
    case 256: return launch_decode_d<T, 256>(p, aligned, splits, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

// Enough blocks to fill the GPU a few times over, but no chunk shorter than kMinChunk keys. Shapes only:
// the bounds live on the device.
int decode_num_splits(const AttentionParams& p, int num_sms) {
  if (p.heads_kv <= 0 || p.batch <= 0 || p.q_len <= 0) return 1;
  const int64_t q_chunks = (static_cast<int64_t>(p.heads_q / p.heads_kv) * p.q_len + kQPerBlock - 1) / kQPerBlock;
  const int64_t base = q_chunks * p.heads_kv * p.batch;
  const int64_t slots = static_cast<int64_t>(kBlocksPerSm) * (num_sms > 0 ? num_sms : 132);
  int64_t splits = kWaves * slots / base;  // rounded down: no partial extra wave
  const int64_t by_len = (static_cast<int64_t>(p.kv_len) + kMinChunk - 1) / kMinChunk;
  if (splits > by_len) splits = by_len;
  if (splits > kMaxSplits) splits = kMaxSplits;
  if (splits < 1) splits = 1;
  return static_cast<int>(splits);
}

size_t decode_workspace_bytes(const AttentionParams& p, int num_sms) {
  const int splits = decode_num_splits(p, num_sms);
  if (splits <= 1) return 0;
  const size_t rows_total = static_cast<size_t>(p.batch) * p.q_len * p.heads_q;
  return static_cast<size_t>(splits) * rows_total * (static_cast<size_t>(p.head_dim) + 2) * sizeof(float);
}

cudaError_t launch_decode(DType dtype, const AttentionParams& p, bool aligned, int num_sms, cudaStream_t stream) {
  const int splits = decode_num_splits(p, num_sms);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_decode_t<T>(p, aligned, splits, stream);
  });
}

}  // namespace attn
}  // namespace eet
