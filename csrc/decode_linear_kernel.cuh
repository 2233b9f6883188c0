// decode_linear's kernel template (decode_linear.cu says how it works) and its launch for one (norm, epilogue) pair
// and one work split. Each decode_linear_split*.cu instantiates one split, so the JIT build compiles them in
// parallel; decode_linear.cu picks the split per call.
#pragma once

#include <algorithm>

#include "attention_ptx.cuh"
#include "common.cuh"
#include "decode_linear.h"
#include "decode_linear_splits.h"
#include "decode_linear_tile.cuh"

namespace eet {
namespace {

using attn::mma_16816;

constexpr int kStepCols = 32;  // K columns a warp consumes per step (4 lanes x 8 elements per row)

// W steps in flight per warp: 4 x 32 bytes per lane, 4 KB per warp, 64 KB per SM at 16 warps, which covers HBM
// latency at the H200's bandwidth (~25 KB per SM needed); more spills under the 128-register cap of 16 warps per SM.
constexpr int kAhead = 4;

// W rows are read once per step: keep them out of L1, which x and the norm weight use, and first out of L2.
__device__ __forceinline__ uint4 ldg_stream(const void* p, uint64_t policy) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p), "l"(policy));
  return r;
}

// W is read once per step and the step streams far more than the L2 cache holds: an evict-first policy keeps W from
// pushing out what is read again (x, the residual, the KV cache of the attention kernels, the norm weights).
// Measured on an H100 (decode-profile, one call): llama-1b 1237 -> 1221 us per step at batch 1, 1310 -> 1289 at 8.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ uint4 ldg_keep(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// The kWarps warps of a block share a 16-row tile, each streaming a 1/kWarps slice of K. Both block sizes keep 16 warps
// per SM (two blocks of 8 or one of 16), which is what the 128-register cap of kAhead's W ring allows. Norm kernels
// take dynamic shared memory for the staged x rows (decode_linear_staged_bytes).
template <typename T, int kNT, int kNorm, int kEpi, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, 16 / kWarps) decode_linear_kernel(const DecodeLinearParams p) {
  constexpr int kCols = 8 * kNT;  // x rows one block covers: 8 per n8 tile
  constexpr bool kStaged = kNorm != kNormNone;
  __shared__ float part[kWarps][16][kCols + 1];  // +1: the finishing threads read a column across rows
  extern __shared__ __align__(16) unsigned char staged_smem[];
  T* const staged = reinterpret_cast<T*>(staged_smem);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  int pair = 0;
  if constexpr (kEpi == kEpiRotaryKv) pair = static_cast<int>(p.head_dim / 2);
  if constexpr (kEpi == kEpiSiluMul || kEpi == kEpiGeluTanhMul) pair = static_cast<int>(p.rows / 2);
  // The last tile may be partial (LM heads: vocab 50257); loads and stores check row < rows.
  const int tiles = static_cast<int>((p.rows + 15) / 16);
  const T* __restrict__ w = static_cast<const T*>(p.weight);
  const int steps = static_cast<int>((p.k + kStepCols - 1) / kStepCols);
  const int s_begin = steps * warp / kWarps, s_end = steps * (warp + 1) / kWarps;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  const uint64_t policy = evict_first_policy();
  auto col_ok = [&](int s) { return static_cast<int64_t>(s) * kStepCols + 8 * t + 8 <= p.k; };

  // The block walks tiles blockIdx.x, + gridDim.x, ... (a persistent grid of 16 warps per SM): its norm prologue runs
  // once, and the next tile's first W loads go out before the current tile's reduction and epilogue.
  int tile = blockIdx.x;
  const T* wa = nullptr;
  const T* wb = nullptr;
  bool ok_a = false, ok_b = false;
  uint4 w_a[kAhead], w_b[kAhead];
  auto start_tile = [&](int next_tile) {
    const int64_t row_a = tile_row(next_tile, g, pair), row_b = tile_row(next_tile, g + 8, pair);  // row * ldw in 64 bits
    ok_a = row_a < p.rows;
    ok_b = row_b < p.rows;
    wa = w + row_a * p.ldw + 8 * t;
    wb = w + row_b * p.ldw + 8 * t;
#pragma unroll
    for (int i = 0; i < kAhead; ++i) {
      const int s = s_begin + i;
      const bool ok = s < s_end && col_ok(s);
      w_a[i] = ok && ok_a ? ldg_stream(wa + s * kStepCols, policy) : zero;
      w_b[i] = ok && ok_b ? ldg_stream(wb + s * kStepCols, policy) : zero;
    }
  };

  pdl_trigger();
  if (tile < tiles) start_tile(tile);
  pdl_wait();  // x and the residual come from the previous kernels of the step

  const T* __restrict__ x = static_cast<const T*>(p.x);
  const int64_t ld_staged = decode_linear_staged_ld(p.k);
  // Norm kernels normalize x once per block into shared memory with HF's roundings (x_normalized), and the main loop
  // reads the mma's B fragments from there. Normalizing each fragment as it was loaded, the earlier form, redid the
  // norm for every tile and cost ~60 instructions per step: the kernel issued an instruction every ~2 cycles per
  // scheduler (ncu, H100) and streamed W ~20% slower than a plain copy. The prologue is on the kernel's critical path
  // (the W loads issued before pdl_wait wait for it), so it is built from as few dependent L2 round trips as possible.
  // RMSNorm: 1/rms. LayerNorm: the mean, then 1/std from the centered sum of squares (biased variance), the
  // statistics of layernorm.cu.
  if constexpr (kStaged) {
    const T* __restrict__ nw = static_cast<const T*>(p.norm_weight);
    const T* __restrict__ nb = static_cast<const T*>(p.norm_bias);
    const int chunks = static_cast<int>((p.k + kNormChunk - 1) / kNormChunk);
    if (chunks <= kNormMaxChunks && p.m * chunks <= kWarps * kNormHeld) {
      // Few rows (decode batches up to 16 / chunks-per-row): the rows' 256-column chunks are spread over the warps,
      // each holding its chunks of x, the norm weight and bias in registers from one load. The statistics are summed
      // per row through shared memory, so the prologue costs one L2 round trip and two or three barriers.
      float* const row_sum = reinterpret_cast<float*>(staged_smem + decode_linear_staged_rows_bytes(p.m, p.k));
      float* const row_sq = row_sum + 16 * kNormMaxChunks;
      uint4 raw[kNormHeld], w8[kNormHeld], b8[kNormHeld];
      float v[kNormHeld][8];
      int row_of[kNormHeld];
      int64_t col_of[kNormHeld];
      bool in_k[kNormHeld];
#pragma unroll
      for (int h = 0; h < kNormHeld; ++h) {
        const int u = warp + h * kWarps;
        row_of[h] = u < p.m * chunks ? u / chunks : -1;
        col_of[h] = static_cast<int64_t>(u - (u / chunks) * chunks) * kNormChunk + 8 * lane;
        in_k[h] = row_of[h] >= 0 && col_of[h] < p.k;  // k is a multiple of 8: a lane's 8 columns are all in or out
        const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
        raw[h] = in_k[h] ? ldg_keep(x + row_of[h] * p.ldx + col_of[h]) : zero4;
        w8[h] = in_k[h] ? ldg_keep(nw + col_of[h]) : zero4;
        b8[h] = in_k[h] && kNorm == kNormLayer && nb != nullptr ? ldg_keep(nb + col_of[h]) : zero4;
      }
      // First pass: sum (LayerNorm) or sum of squares (RMSNorm) per chunk, then per row.
#pragma unroll
      for (int h = 0; h < kNormHeld; ++h) {
        const T* xv = reinterpret_cast<const T*>(&raw[h]);
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          v[h][j] = to_float(xv[j]);
          acc += kNorm == kNormRms ? v[h][j] * v[h][j] : v[h][j];
        }
        acc = warp_sum(acc);
        if (row_of[h] >= 0 && lane == 0) row_sum[row_of[h] * kNormMaxChunks + (warp + h * kWarps) % chunks] = acc;
      }
      __syncthreads();
      auto row_total = [&](const float* part, int row) {
        return warp_sum(row >= 0 && lane < chunks ? part[row * kNormMaxChunks + lane] : 0.0f);
      };
      float mean[kNormHeld], rstd[kNormHeld];
#pragma unroll
      for (int h = 0; h < kNormHeld; ++h) {
        const float total = row_total(row_sum, row_of[h]);
        mean[h] = kNorm == kNormRms ? 0.0f : total / static_cast<float>(p.k);
        rstd[h] = rsqrtf(total / static_cast<float>(p.k) + p.eps);
      }
      if constexpr (kNorm == kNormLayer) {  // second pass: the centered sum of squares (biased variance)
#pragma unroll
        for (int h = 0; h < kNormHeld; ++h) {
          float sq = 0.0f;
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const float d = v[h][j] - mean[h];
            sq += in_k[h] ? d * d : 0.0f;
          }
          sq = warp_sum(sq);
          if (row_of[h] >= 0 && lane == 0) row_sq[row_of[h] * kNormMaxChunks + (warp + h * kWarps) % chunks] = sq;
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < kNormHeld; ++h) rstd[h] = rsqrtf(row_total(row_sq, row_of[h]) / static_cast<float>(p.k) + p.eps);
      }
#pragma unroll
      for (int h = 0; h < kNormHeld; ++h) {
        if (in_k[h]) {
          *reinterpret_cast<uint4*>(staged + row_of[h] * ld_staged + col_of[h]) =
              x_normalized<T, kNorm>(raw[h], w8[h], b8[h], mean[h], rstd[h]);
        }
      }
      __syncthreads();
    } else {
      // More rows: one warp per x row (rows warp, warp + kWarps, ...), each a loop over the row; the rows' loads are
      // independent, so they cost one chain of round trips (the later passes re-read the row from L1 / L2).
      for (int r = warp; r < p.m; r += kWarps) {
        const T* __restrict__ row = x + r * p.ldx;
        float sum = 0.0f;
#pragma unroll 4
        for (int64_t c = static_cast<int64_t>(lane) * 8; c < p.k; c += 32 * 8) {
          float v[8];
          load_float<8>(row + c, v);
#pragma unroll
          for (int j = 0; j < 8; ++j) sum += kNorm == kNormRms ? v[j] * v[j] : v[j];
        }
        sum = warp_sum(sum);
        float mean = 0.0f, rstd;
        if constexpr (kNorm == kNormRms) {
          rstd = rsqrtf(sum / static_cast<float>(p.k) + p.eps);
        } else {
          mean = sum / static_cast<float>(p.k);
          float sq = 0.0f;
#pragma unroll 4
          for (int64_t c = static_cast<int64_t>(lane) * 8; c < p.k; c += 32 * 8) {
            float v[8];
            load_float<8>(row + c, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              const float d = v[j] - mean;
              sq += d * d;
            }
          }
          rstd = rsqrtf(warp_sum(sq) / static_cast<float>(p.k) + p.eps);
        }
#pragma unroll 2
        for (int64_t c = static_cast<int64_t>(lane) * 8; c < p.k; c += 32 * 8) {
          const uint4 raw = ldg_keep(row + c);
          const uint4 w8 = ldg_keep(nw + c);
          const uint4 b8 = kNorm == kNormLayer && nb != nullptr ? ldg_keep(nb + c) : make_uint4(0u, 0u, 0u, 0u);
          *reinterpret_cast<uint4*>(staged + r * ld_staged + c) = x_normalized<T, kNorm>(raw, w8, b8, mean, rstd);
        }
      }
      __syncthreads();
    }
  }

  // x rows of this lane's B fragments: g (n8 tile 0) and g + 8 (tile 1); rows >= m read as zero.
  const T* xr[kNT];
  bool x_ok[kNT];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int r = g + 8 * nt;
    x_ok[nt] = r < p.m;
    xr[nt] = (kStaged ? staged + r * ld_staged : x + (x_ok[nt] ? r : 0) * p.ldx) + 8 * t;
  }
  // Without a norm, x comes from global memory (L1 / L2) kAhead steps ahead, as W does.
  uint4 x_v[kStaged ? 1 : kAhead][kNT];
  auto load_x = [&](int i, int s) {
    if constexpr (!kStaged) {
      const bool ok = s < s_end && col_ok(s);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) x_v[i][nt] = ok && x_ok[nt] ? ldg_keep(xr[nt] + s * kStepCols) : zero;
    }
  };
  auto x_fragment = [&](int i, int s, int nt) {
    if constexpr (kStaged) {
      return col_ok(s) && x_ok[nt] ? *reinterpret_cast<const uint4*>(xr[nt] + s * kStepCols) : zero;
    } else {
      return x_v[i][nt];
    }
  };

#pragma unroll
  for (int i = 0; i < kAhead; ++i) load_x(i, s_begin + i);
  // The output unit this thread finishes (the tile's 256 units; with 16 warps, half the threads) and its epilogue
  // inputs, loaded as each tile starts (after pdl_wait: the residual comes from the previous kernel).
  const bool finisher = tid < 256;
  TileUnit unit{};
  EpilogueInputs inputs{};
  if (finisher && tile < tiles) {
    unit = tile_unit<kEpi>(p, tile, pair, tid);
    inputs = load_epilogue_inputs<T, kEpi>(p, unit);
  }
  for (; tile < tiles; tile += gridDim.x) {
    float acc[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

    for (int s0 = s_begin; s0 < s_end; s0 += kAhead) {
#pragma unroll
      for (int i = 0; i < kAhead; ++i) {
        const int s = s0 + i;
        if (s < s_end) {
          const uint32_t a0[4] = {w_a[i].x, w_b[i].x, w_a[i].y, w_b[i].y};
          const uint32_t a1[4] = {w_a[i].z, w_b[i].z, w_a[i].w, w_b[i].w};
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
            const uint4 b = x_fragment(i, s, nt);
            mma_16816<T>(acc[nt], a0, b.x, b.y);
            mma_16816<T>(acc[nt], a1, b.z, b.w);
          }
          const int next = s + kAhead;
          const bool ok = next < s_end && col_ok(next);
          w_a[i] = ok && ok_a ? ldg_stream(wa + next * kStepCols, policy) : zero;
          w_b[i] = ok && ok_b ? ldg_stream(wb + next * kStepCols, policy) : zero;
          load_x(i, next);
        }
      }
    }

    // C fragment of lane (g, t): rows g / g + 8, x rows 2t, 2t + 1 of each n8 tile.
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      part[warp][g][nt * 8 + 2 * t] = acc[nt][0];
      part[warp][g][nt * 8 + 2 * t + 1] = acc[nt][1];
      part[warp][g + 8][nt * 8 + 2 * t] = acc[nt][2];
      part[warp][g + 8][nt * 8 + 2 * t + 1] = acc[nt][3];
    }
    const bool more = tile + static_cast<int>(gridDim.x) < tiles;
    if (more) {  // the next tile's first loads, in flight during the reduction
      start_tile(tile + gridDim.x);
#pragma unroll
      for (int i = 0; i < kAhead; ++i) load_x(i, s_begin + i);  // every tile reads the same x columns
    }
    __syncthreads();
    if (finisher) {
      finish_output<T, kNT, kEpi, kWarps>(p, unit, inputs, part);
      if (more) {
        unit = tile_unit<kEpi>(p, tile + gridDim.x, pair, tid);
        inputs = load_epilogue_inputs<T, kEpi>(p, unit);
      }
    }
    __syncthreads();  // the next tile's partials overwrite `part`
  }
}

// One (norm, epilogue) pair's kernel with kWarps warps per tile on a persistent grid of 16 warps per SM (two blocks of
// 8 warps or one of 16), each block walking tiles. p == nullptr only asks whether the pair is built
// (decode_linear_has_kernel).
template <typename T, int kNT, int kNorm, int kEpi, int kWarps>
cudaError_t launch(const DecodeLinearParams* p, cudaStream_t stream) {
  if (p == nullptr) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((p->rows + 15) / 16, 16 / kWarps * static_cast<int64_t>(p->num_sms));
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  const auto kernel = decode_linear_kernel<T, kNT, kNorm, kEpi, kWarps>;
  const int64_t smem = kNorm == kNormNone ? 0 : decode_linear_staged_bytes(p->m, p->k);
  // Static (the partial tiles) and dynamic shared memory past 48 KB together need the opt-in, which is per kernel:
  // without it the launch fails with an invalid argument unless an earlier call happened to set it.
  constexpr int64_t kStaticSmem = static_cast<int64_t>(kWarps) * 16 * (8 * kNT + 1) * sizeof(float);
  if (smem + kStaticSmem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return launch_pdl(kernel, grid, block, static_cast<size_t>(smem), stream, 1, *p);
}

// The (norm, epilogue) pairs with a kernel, listed once: those the fused decoder step runs
// (eet_hf/engine/fused_decoder.py; eet_hf/ops/decode.py KERNEL_PAIRS mirrors this list).
template <typename T, int kNT, int kWarps>
cudaError_t dispatch(DecodeNorm norm, DecodeEpilogue epilogue, const DecodeLinearParams* p, cudaStream_t stream) {
  switch (norm) {
    case DecodeNorm::kNone:  // o_proj / down_proj / out_proj / fc2 with the residual add
      switch (epilogue) {
        case DecodeEpilogue::kResidual: return launch<T, kNT, kNormNone, kEpiResidual, kWarps>(p, stream);
        default: return cudaErrorInvalidValue;
      }
    case DecodeNorm::kRms:  // Llama-style: packed QKV + rotary + KV write, gate/up + act, the LM head, Qwen3's QKV
      switch (epilogue) {
        case DecodeEpilogue::kStore: return launch<T, kNT, kNormRms, kEpiStore, kWarps>(p, stream);
        case DecodeEpilogue::kSiluMul: return launch<T, kNT, kNormRms, kEpiSiluMul, kWarps>(p, stream);
        case DecodeEpilogue::kGeluTanhMul: return launch<T, kNT, kNormRms, kEpiGeluTanhMul, kWarps>(p, stream);
        case DecodeEpilogue::kRotaryKv: return launch<T, kNT, kNormRms, kEpiRotaryKv, kWarps>(p, stream);
        default: return cudaErrorInvalidValue;
      }
    case DecodeNorm::kLayer:  // OPT, GPT-2: packed QKV (+ q scale) + KV write (no rotary), fc1 + ReLU or c_fc +
                              // gelu_new, the LM head
      switch (epilogue) {
        case DecodeEpilogue::kStore: return launch<T, kNT, kNormLayer, kEpiStore, kWarps>(p, stream);
        case DecodeEpilogue::kRelu: return launch<T, kNT, kNormLayer, kEpiRelu, kWarps>(p, stream);
        case DecodeEpilogue::kGeluNew: return launch<T, kNT, kNormLayer, kEpiGeluNew, kWarps>(p, stream);
        case DecodeEpilogue::kRotaryKv: return launch<T, kNT, kNormLayer, kEpiRotaryKv, kWarps>(p, stream);
        default: return cudaErrorInvalidValue;
      }
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

// The definition each split file instantiates: fp16 / bf16, 1-8 or 9-16 x rows.
#define EET_DECODE_LINEAR_SPLIT(kWarps)                                                                        \
  cudaError_t decode_linear_split##kWarps(DType dtype, const DecodeLinearParams* p, DecodeNorm norm,            \
                                          DecodeEpilogue epilogue, cudaStream_t stream) {                      \
    const bool wide = p != nullptr && p->m > 8;                                                                \
    switch (dtype) {                                                                                           \
      case DType::kFloat16:                                                                                    \
        return wide ? dispatch<__half, 2, kWarps>(norm, epilogue, p, stream)                                   \
                    : dispatch<__half, 1, kWarps>(norm, epilogue, p, stream);                                  \
      case DType::kBFloat16:                                                                                   \
        return wide ? dispatch<__nv_bfloat16, 2, kWarps>(norm, epilogue, p, stream)                            \
                    : dispatch<__nv_bfloat16, 1, kWarps>(norm, epilogue, p, stream);                           \
      default: return cudaErrorInvalidValue; /* fp32 has no m16n8k16 path: the caller uses torch's GEMM */      \
    }                                                                                                          \
  }

}  // namespace eet
