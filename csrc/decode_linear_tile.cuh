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

// What one output unit's epilogue reads besides the tile's sums: the bias, the residual, the rotary table entries and
// the cache slot. None of it depends on the tile's arithmetic, so the kernel loads it when the tile starts and the
// L2 round trip overlaps the tile's W stream instead of following its reduction.
struct EpilogueInputs {
  float bias1 = 0.0f, bias2 = 0.0f;  // bias of the unit's row (paired: of its two rows); 0 without a bias
  float residual = 0.0f;             // kResidual
  float cos1 = 1.0f, sin1 = 0.0f, cos2 = 1.0f, sin2 = 0.0f;  // kRotaryKv with tables: entries j and j + head_dim / 2
  int64_t slot = -1;                 // kRotaryKv k / v rows: the cache slot of the unit's x row
};

// The unit u (0..255) of a tile: an output (row u % 16, x row u / 16), or for the paired epilogues a row pair (u % 8,
// x row u / 8). `live`: the unit has an output (x row < m, row < rows).
struct TileUnit {
  int r, c, row1, row2;
  bool live;
};

template <int kEpi>
__device__ __forceinline__ TileUnit tile_unit(const DecodeLinearParams& p, int tile, int pair, int u) {
  TileUnit t;
  if constexpr (!paired(kEpi)) {
    t.r = u % 16;
    t.c = u / 16;
    t.row1 = t.row2 = tile_row(tile, t.r, 0);
  } else {
    t.r = u % 8;
    t.c = u / 8;
    t.row1 = tile_row(tile, t.r, pair);
    t.row2 = tile_row(tile, t.r + 8, pair);
  }
  t.live = t.c < p.m && t.row2 < p.rows;
  return t;
}

template <typename T, int kEpi>
__device__ __forceinline__ EpilogueInputs load_epilogue_inputs(const DecodeLinearParams& p, const TileUnit& t) {
  EpilogueInputs in;
  if (!t.live) return in;
  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  if (bias != nullptr) {
    in.bias1 = to_float(bias[t.row1]);
    in.bias2 = to_float(bias[t.row2]);
  }
  if constexpr (kEpi == kEpiResidual) {
    in.residual = to_float(static_cast<const T*>(p.residual)[t.c * p.ld_res + t.row1]);
  }
  if constexpr (kEpi == kEpiRotaryKv) {
    const int hd = static_cast<int>(p.head_dim), half = hd / 2;  // 32-bit, as tile_row
    const int q_rows = p.heads_q * hd, k_rows = p.heads_kv * hd;
    const int j = t.row1 % hd;
    if (p.cos != nullptr && t.row1 < q_rows + k_rows) {
      const T* cs = static_cast<const T*>(p.cos) + t.c * p.ld_cs;
      const T* sn = static_cast<const T*>(p.sin) + t.c * p.ld_cs;
      in.cos1 = to_float(cs[j]);
      in.sin1 = to_float(sn[j]);
      in.cos2 = to_float(cs[j + half]);
      in.sin2 = to_float(sn[j + half]);
    }
    if (t.row1 >= q_rows) in.slot = p.write_pos[t.c];
  }
  return in;
}

// A unit's output once the tile's kSplit warps' partial tiles (`part`) are summed in warp order.
template <typename T, int kNT, int kEpi, int kSplit>
__device__ __forceinline__ void finish_output(const DecodeLinearParams& p, const TileUnit& t,
                                              const EpilogueInputs& in, const float (*part)[16][8 * kNT + 1]) {
  if (!t.live) return;
  T* __restrict__ out = static_cast<T*>(p.out);
  const bool has_bias = p.bias != nullptr;
  auto tile_sum = [&](int r, int c) {
    float v = 0.0f;
#pragma unroll
    for (int i = 0; i < kSplit; ++i) v += part[i][r][c];
    return v;
  };
  // y = round(acc + bias), HF's linear output in the storage type.
  auto linear_out = [&](float v, float b) { return round_to<T>(has_bias ? __fadd_rn(v, b) : v); };

  if constexpr (!paired(kEpi)) {
    const float y = linear_out(tile_sum(t.r, t.c), in.bias1);
    float o = y;
    if constexpr (kEpi == kEpiResidual) o = __fadd_rn(in.residual, y);
    if constexpr (kEpi == kEpiRelu) o = y < 0.0f ? 0.0f : y;  // torch's relu: NaN stays NaN
    if constexpr (kEpi == kEpiGeluNew) o = gelu_tanh_staged<T>(y);
    out[t.c * p.rows + t.row1] = from_float<T>(o);
  } else {
    const float y1 = linear_out(tile_sum(t.r, t.c), in.bias1), y2 = linear_out(tile_sum(t.r + 8, t.c), in.bias2);
    if constexpr (kEpi == kEpiSiluMul || kEpi == kEpiGeluTanhMul) {
      const int pair = static_cast<int>(p.rows / 2);
      const float act = round_to<T>(kEpi == kEpiSiluMul ? silu(y1) : gelu_tanh(y1));
      out[static_cast<int64_t>(t.c) * pair + t.row1] = from_float<T>(__fmul_rn(act, y2));
    } else {
      const int hd = static_cast<int>(p.head_dim), half = hd / 2;  // 32-bit, as tile_row
      const int q_rows = p.heads_q * hd, k_rows = p.heads_kv * hd;
      const int j = t.row1 % hd;  // < half: row2 is its rotary partner j + half
      float o1 = y1, o2 = y2;
      // No tables (OPT): q and k as projected. Identity tables (cos 1, sin 0) would round the same way, but cost two
      // table reads per element and turn an overflowed partner into NaN (inf * 0) where HF keeps this element.
      if (p.cos != nullptr && t.row1 < q_rows + k_rows) {
        // HF: q * cos + rotate_half(q) * sin, each product rounded, then the sum (rotary.cu).
        o1 = __fadd_rn(round_to<T>(__fmul_rn(y1, in.cos1)), round_to<T>(__fmul_rn(-y2, in.sin1)));
        o2 = __fadd_rn(round_to<T>(__fmul_rn(y2, in.cos2)), round_to<T>(__fmul_rn(y1, in.sin2)));
      }
      if (t.row1 < q_rows) {
        if (p.q_scale != 1.0f) {  // HF OPT's `q_proj(x) * scaling`: the rounded q times the scale in fp32, rounded
          o1 = __fmul_rn(round_to<T>(o1), p.q_scale);
          o2 = __fmul_rn(round_to<T>(o2), p.q_scale);
        }
        out[static_cast<int64_t>(t.c) * q_rows + t.row1] = from_float<T>(o1);
        out[static_cast<int64_t>(t.c) * q_rows + t.row2] = from_float<T>(o2);
      } else {
        const bool is_k = t.row1 < q_rows + k_rows;
        const int local = t.row1 - (is_k ? q_rows : q_rows + k_rows);
        const int head = local / hd;
        if (in.slot >= 0 && in.slot < p.cache_len) {
          const int64_t* st = is_k ? p.k_stride : p.v_stride;
          T* cache = static_cast<T*>(is_k ? p.k_cache : p.v_cache) + t.c * st[0] + head * st[1] + in.slot * st[2];
          cache[j] = from_float<T>(o1);
          cache[j + half] = from_float<T>(o2);
        }
      }
    }
  }
}

}  // namespace
}  // namespace eet
