// decode_linear's kernel template (decode_linear.cu says how it works). decode_linear_launch.cuh launches it per
// (norm, epilogue) pair and work split; each decode_linear_split*.cu instantiates one split, so the JIT build compiles
// them in parallel.
#pragma once

#include "attention_ptx.cuh"
#include "common.cuh"
#include "decode_linear.h"
#include "decode_linear_tile.cuh"

namespace eet {
namespace {

using attn::mma_16816;

constexpr int kStepCols = 32;  // K columns a warp consumes per step (4 lanes x 8 elements per row)

// W is read once per step and the step streams far more than the L2 cache holds: an evict-first policy keeps W from
// pushing out what is read again (x, the residual, the KV cache of the attention kernels, the norm weights).
// Measured on an H100 (decode-profile, one call): llama-1b 1237 -> 1221 us per step at batch 1, 1310 -> 1289 at 8.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// 16 bytes of W into this thread's ring slot, bypassing L1 (read once), evict-first in L2; zeros where !ok (nothing
// is read then: src-size 0).
__device__ __forceinline__ void cp_async_w(uint32_t dst, const void* src, bool ok, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(src),
               "r"(ok ? 16 : 0), "l"(policy)
               : "memory");
}
// 16 bytes of x into this thread's ring slot through L1: every tile reads the same x columns again.
__device__ __forceinline__ void cp_async_x(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
// 16 bytes of this thread's ring slot; asm volatile keeps it ahead of the cp.async that refills the slot.
__device__ __forceinline__ uint4 lds_v4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

// Wait until the oldest of the `depth` groups in flight has landed (wait_group takes an immediate).
__device__ __forceinline__ void cp_async_wait_oldest(int depth) {
  static_assert(kDecodeLinearMinRing >= 2 && kDecodeLinearMaxRing <= 12, "one case per ring depth");
  switch (depth) {
    case 2: attn::cp_async_wait<1>(); break;
    case 3: attn::cp_async_wait<2>(); break;
    case 4: attn::cp_async_wait<3>(); break;
    case 5: attn::cp_async_wait<4>(); break;
    case 6: attn::cp_async_wait<5>(); break;
    case 7: attn::cp_async_wait<6>(); break;
    case 8: attn::cp_async_wait<7>(); break;
    case 9: attn::cp_async_wait<8>(); break;
    case 10: attn::cp_async_wait<9>(); break;
    case 11: attn::cp_async_wait<10>(); break;
    default: attn::cp_async_wait<11>(); break;
  }
}

__device__ __forceinline__ uint4 ldg_keep(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// The kWarps warps of a block share a 16-row tile, each streaming a 1/kWarps slice of K. Both block sizes keep 16 warps
// per SM (two blocks of 8 or one of 16). Dynamic shared memory holds the W ring (p.ring_depth slots per thread) and,
// for the norm kernels, the staged x rows after it (decode_linear_staged_bytes).
template <typename T, int kNT, int kNorm, int kEpi, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, 16 / kWarps) decode_linear_kernel(const DecodeLinearParams p) {
  constexpr int kCols = 8 * kNT;  // x rows one block covers: 8 per n8 tile
  constexpr bool kStaged = kNorm != kNormNone;
  constexpr int kThreads = kWarps * 32;
  constexpr int kParts = 2 + (kStaged ? 0 : kNT);  // 16-byte fragments per thread and ring slot: W rows g, g + 8 (, x)
  __shared__ float part[kWarps][16][kCols + 1];  // +1: the finishing threads read a column across rows
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  const int depth = p.ring_depth;
  unsigned char* const staged_smem = dyn_smem + static_cast<int64_t>(depth) * kParts * kThreads * 16;
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

  // The W ring. Slot i of this thread: kParts 16-byte fragments at ring_base + i * kSlotStride + part * kThreads * 16,
  // so a warp's reads of one part are 512 contiguous bytes (no bank conflict). Each thread reads only what it copied
  // itself, so cp.async.wait_group is the only synchronization. The ring runs across tiles: the load cursor (load_tile,
  // load_step) walks this warp's steps of tile blockIdx.x, then of tile + gridDim.x, ..., `depth` steps ahead of the
  // main loop, so the stream never drains at a tile's end and the first `depth` steps go out before pdl_wait().
  constexpr uint32_t kSlotStride = kParts * kThreads * 16;
  const uint32_t ring_base = attn::smem_addr(dyn_smem) + tid * 16;
  int load_tile = blockIdx.x, load_step = s_begin;
  const T* wa = nullptr;
  const T* wb = nullptr;
  bool ok_a = false, ok_b = false;
  auto aim = [&](int tile) {  // W rows g and g + 8 of a tile, row * ldw in 64 bits
    const int64_t row_a = tile_row(tile, g, pair), row_b = tile_row(tile, g + 8, pair);
    ok_a = row_a < p.rows;
    ok_b = row_b < p.rows;
    wa = w + row_a * p.ldw + 8 * t;
    wb = w + row_b * p.ldw + 8 * t;
  };
  if (s_begin < s_end && load_tile < tiles) aim(load_tile);
  // W of the load cursor's step into `slot`, and the cursor one step on. Past the warp's last tile nothing is copied.
  auto load_w = [&](int slot) {
    const int s = load_step;
    if (s_begin < s_end && load_tile < tiles) {
      const bool ok = col_ok(s);
      const uint32_t dst = ring_base + slot * kSlotStride;
      cp_async_w(dst, ok && ok_a ? wa + s * kStepCols : w, ok && ok_a, policy);
      cp_async_w(dst + kThreads * 16, ok && ok_b ? wb + s * kStepCols : w, ok && ok_b, policy);
      if (++load_step == s_end) {
        load_step = s_begin;
        load_tile += gridDim.x;
        if (load_tile < tiles) aim(load_tile);
      }
    }
  };

  pdl_trigger();
  for (int i = 0; i < depth; ++i) {  // the first steps' W, in flight across pdl_wait (no kernel of a step writes W)
    load_w(i);
    attn::cp_async_commit();
  }
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
  // Without a norm, x rides in the ring beside W: its copies for the slots already in flight go out now (x comes from
  // the previous kernel), each its own group, so the first slot waits for its W and its x alike.
  auto load_x = [&](int slot, int s) {
    if constexpr (!kStaged) {
      const bool ok = col_ok(s);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        cp_async_x(ring_base + slot * kSlotStride + (2 + nt) * kThreads * 16, ok && x_ok[nt] ? xr[nt] + s * kStepCols : x,
                   ok && x_ok[nt]);
      }
    }
  };
  if constexpr (!kStaged) {
    int s = s_begin;
    for (int i = 0; i < depth; ++i) {  // the primed slots hold steps s_begin, s_begin + 1, ... wrapping per tile
      if (s_begin < s_end) {
        load_x(i, s);
        if (++s == s_end) s = s_begin;
      }
      attn::cp_async_commit();
    }
  }
  auto x_fragment = [&](int slot, int s, int nt) {
    if constexpr (kStaged) {
      return col_ok(s) && x_ok[nt] ? *reinterpret_cast<const uint4*>(xr[nt] + s * kStepCols) : zero;
    } else {
      return lds_v4(ring_base + slot * kSlotStride + (2 + nt) * kThreads * 16);
    }
  };
  auto w_fragment = [&](int slot, int part_index) { return lds_v4(ring_base + slot * kSlotStride + part_index * kThreads * 16); };

  // The output unit this thread finishes (the tile's 256 units; with 16 warps, half the threads) and its epilogue
  // inputs, loaded as each tile starts (after pdl_wait: the residual comes from the previous kernel).
  const bool finisher = tid < 256;
  int tile = blockIdx.x;
  TileUnit unit{};
  EpilogueInputs inputs{};
  if (finisher && tile < tiles) {
    unit = tile_unit<kEpi>(p, tile, pair, tid);
    inputs = load_epilogue_inputs<T, kEpi>(p, unit);
  }
  int slot = 0;  // the ring slot of the main loop's step (its `depth`-th successor is being loaded)
  for (; tile < tiles; tile += gridDim.x) {
    float acc[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

    for (int s = s_begin; s < s_end; ++s) {
      cp_async_wait_oldest(depth);
      const uint4 w_a = w_fragment(slot, 0), w_b = w_fragment(slot, 1);
      const uint32_t a0[4] = {w_a.x, w_b.x, w_a.y, w_b.y};
      const uint32_t a1[4] = {w_a.z, w_b.z, w_a.w, w_b.w};
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const uint4 b = x_fragment(slot, s, nt);
        mma_16816<T>(acc[nt], a0, b.x, b.y);
        mma_16816<T>(acc[nt], a1, b.z, b.w);
      }
      // The slot is free once the mma above have their operands (they issue in order, after the shared loads they
      // read): refill it with the step `depth` ahead.
      const int next = load_step;
      if (load_tile < tiles) load_x(slot, next);  // x of the same columns (without a norm)
      load_w(slot);
      attn::cp_async_commit();
      slot = slot + 1 == depth ? 0 : slot + 1;
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
  attn::cp_async_wait_all();  // no copy may still be writing this block's shared memory when it exits
}

}  // namespace
}  // namespace eet
