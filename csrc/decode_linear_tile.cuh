// One 16-row tile of decode_linear.cu: where its W rows are (plain or paired), the norm prologue's roundings of x,
// and its epilogue after the warps' partial tiles are summed. Included through
// decode_linear_kernel.cuh by the decode_linear_split*.cu files (an anonymous namespace: one copy per translation
// unit).
#pragma once

#include <cstdint>

#include "attention_ptx.cuh"
#include "common.cuh"
#include "decode_linear.h"
#include "gelu_staged.cuh"

namespace eet {
namespace {

using attn::pack2;

constexpr int kNormNone = static_cast<int>(DecodeNorm::kNone);
constexpr int kNormRms = static_cast<int>(DecodeNorm::kRms);
constexpr int kNormLayer = static_cast<int>(DecodeNorm::kLayer);

constexpr int kEpiStore = static_cast<int>(DecodeEpilogue::kStore);
constexpr int kEpiResidual = static_cast<int>(DecodeEpilogue::kResidual);
constexpr int kEpiSiluMul = static_cast<int>(DecodeEpilogue::kSiluMul);
constexpr int kEpiGeluTanhMul = static_cast<int>(DecodeEpilogue::kGeluTanhMul);
constexpr int kEpiRotaryKv = static_cast<int>(DecodeEpilogue::kRotaryKv);
constexpr int kEpiRelu = static_cast<int>(DecodeEpilogue::kRelu);
constexpr int kEpiGeluNew = static_cast<int>(DecodeEpilogue::kGeluNew);

constexpr bool paired(int epi) { return epi == kEpiSiluMul || epi == kEpiGeluTanhMul || epi == kEpiRotaryKv; }

// Physical W row of tile row r (0..15). pair == 0: 16 consecutive rows. Otherwise rows 0..7 are 8 consecutive rows of
// a first half and rows 8..15 the rows `pair` later; halves alternate every `pair` rows (rotary: pair = head_dim / 2
// inside each head; gate/up: pair = n_out, the whole gate half then the whole up half). 32-bit arithmetic (the host
// keeps rows below 2^31): a 64-bit division is ~4x a 32-bit one, and this one sits on each tile's critical path (the
// next tile's load addresses, the epilogue's output rows).
__device__ __forceinline__ int tile_row(int tile, int r, int pair) {
  if (pair == 0) return tile * 16 + r;
  const int groups = pair >> 3;  // pair is a multiple of 8
  const int group = tile / groups;
  const int base = group * 2 * pair + (tile - group * groups) * 8;
  return base + (r < 8 ? r : pair + (r - 8));
}

// HF's SiLU (torch silu in fp32 on the rounded gate) and gelu_pytorch_tanh.
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float gelu_tanh(float v) {
  const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
  return 0.5f * v * (1.0f + tanhf(inner));
}

// Eight x values (one 16-byte chunk) normalized, as the B-operand registers of a step's two mma: RMSNorm
// round(round(x * rstd) * w), HF Llama's order; LayerNorm round((x - mean) * rstd * w + b), torch's layer_norm
// kernel's expression (it contracts `... * w + b` to one fma; the intrinsics pin that order here).
template <typename T, int kNorm>
__device__ __forceinline__ uint4 x_normalized(const uint4& raw, const uint4& nw, const uint4& nb, float mean,
                                              float rstd) {
  const T* xv = reinterpret_cast<const T*>(&raw);
  const T* wv = reinterpret_cast<const T*>(&nw);
  float y[8];
  if constexpr (kNorm == kNormRms) {
#pragma unroll
    for (int j = 0; j < 8; ++j) y[j] = round_to<T>(__fmul_rn(round_to<T>(__fmul_rn(to_float(xv[j]), rstd)), to_float(wv[j])));
  } else {
    const T* bv = reinterpret_cast<const T*>(&nb);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      y[j] = round_to<T>(__fmaf_rn(__fmul_rn(__fsub_rn(to_float(xv[j]), mean), rstd), to_float(wv[j]), to_float(bv[j])));
    }
  }
  return make_uint4(pack2<T>(y[0], y[1]), pack2<T>(y[2], y[3]), pack2<T>(y[4], y[5]), pack2<T>(y[6], y[7]));
}

// One output unit u (0..255) of a tile after its kSplit warps' partial tiles (`part`, the first of them) are summed in
// warp order: an output (row u % 16, x row u / 16), or for the paired epilogues a row pair (u % 8, x row u / 8).
template <typename T, int kNT, int kEpi, int kSplit>
__device__ __forceinline__ void finish_output(const DecodeLinearParams& p, int tile, int pair,
                                              const float (*part)[16][8 * kNT + 1], int u) {
  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  T* __restrict__ out = static_cast<T*>(p.out);
  auto tile_sum = [&](int r, int c) {
    float v = 0.0f;
#pragma unroll
    for (int i = 0; i < kSplit; ++i) v += part[i][r][c];
    return v;
  };
  // y = round(acc + bias), HF's linear output in the storage type.
  auto linear_out = [&](int64_t row, float v) {
    return round_to<T>(bias != nullptr ? __fadd_rn(v, to_float(bias[row])) : v);
  };

  if constexpr (!paired(kEpi)) {
    const int r = u % 16, c = u / 16;  // 16 rows x 16 columns: every output of the tile
    const int row = tile_row(tile, r, 0);
    if (c < p.m && row < p.rows) {
      const float y = linear_out(row, tile_sum(r, c));
      float o = y;
      if constexpr (kEpi == kEpiResidual) {
        o = __fadd_rn(to_float(static_cast<const T*>(p.residual)[c * p.ld_res + row]), y);
      }
      if constexpr (kEpi == kEpiRelu) o = y < 0.0f ? 0.0f : y;  // torch's relu: NaN stays NaN
      if constexpr (kEpi == kEpiGeluNew) o = gelu_tanh_staged<T>(y);
      out[c * p.rows + row] = from_float<T>(o);
    }
  } else {
    const int r = u % 8, c = u / 8;  // 8 pairs x 32 columns (x rows past m idle)
    const int row1 = tile_row(tile, r, pair), row2 = tile_row(tile, r + 8, pair);
    if (c < p.m && row2 < p.rows) {
      const float y1 = linear_out(row1, tile_sum(r, c)), y2 = linear_out(row2, tile_sum(r + 8, c));
      if constexpr (kEpi == kEpiSiluMul || kEpi == kEpiGeluTanhMul) {
        const float act = round_to<T>(kEpi == kEpiSiluMul ? silu(y1) : gelu_tanh(y1));
        out[static_cast<int64_t>(c) * pair + row1] = from_float<T>(__fmul_rn(act, y2));
      } else {
        const int hd = static_cast<int>(p.head_dim), half = hd / 2;  // 32-bit, as tile_row
        const int q_rows = p.heads_q * hd, k_rows = p.heads_kv * hd;
        const int j = row1 % hd;  // < half: row2 is its rotary partner j + half
        float o1 = y1, o2 = y2;
        // No tables (OPT): q and k as projected. Identity tables (cos 1, sin 0) would round the same way, but cost two
        // table reads per element and turn an overflowed partner into NaN (inf * 0) where HF keeps this element.
        if (p.cos != nullptr && row1 < q_rows + k_rows) {
          const T* cs = static_cast<const T*>(p.cos) + c * p.ld_cs;
          const T* sn = static_cast<const T*>(p.sin) + c * p.ld_cs;
          // HF: q * cos + rotate_half(q) * sin, each product rounded, then the sum (rotary.cu).
          o1 = __fadd_rn(round_to<T>(__fmul_rn(y1, to_float(cs[j]))), round_to<T>(__fmul_rn(-y2, to_float(sn[j]))));
          o2 = __fadd_rn(round_to<T>(__fmul_rn(y2, to_float(cs[j + half]))),
                         round_to<T>(__fmul_rn(y1, to_float(sn[j + half]))));
        }
        if (row1 < q_rows) {
          if (p.q_scale != 1.0f) {  // HF OPT's `q_proj(x) * scaling`: the rounded q times the scale in fp32, rounded
            o1 = __fmul_rn(round_to<T>(o1), p.q_scale);
            o2 = __fmul_rn(round_to<T>(o2), p.q_scale);
          }
          out[static_cast<int64_t>(c) * q_rows + row1] = from_float<T>(o1);
          out[static_cast<int64_t>(c) * q_rows + row2] = from_float<T>(o2);
        } else {
          const bool is_k = row1 < q_rows + k_rows;
          const int local = row1 - (is_k ? q_rows : q_rows + k_rows);
          const int head = local / hd;
          const int64_t slot = p.write_pos[c];
          if (slot >= 0 && slot < p.cache_len) {
            const int64_t* st = is_k ? p.k_stride : p.v_stride;
            T* cache = static_cast<T*>(is_k ? p.k_cache : p.v_cache) + c * st[0] + head * st[1] + slot * st[2];
            cache[j] = from_float<T>(o1);
            cache[j + half] = from_float<T>(o2);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace eet
