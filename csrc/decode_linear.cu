// Decode-step linear layers over nn.Linear weights on tensor cores (decode_linear.h).
//
// At 1-16 rows a linear layer is bound by streaming W from HBM once; the arithmetic is 1-16 multiply-adds per weight.
// So W streams through a per-thread ring in shared memory (cp.async, no register staging) into the A operand registers
// of mma.sync m16n8k16 and x into its B operand: a warp's 16 output rows are the mma's M, the (up to 8) rows of x its N.
// The trick that makes 16-byte copies fit the fragment layout: the order in which a dot product visits K does not
// matter, as long as W and x visit it the same way. Lane (g, t) copies 8 consecutive columns 8t..8t+7 of a 32-column
// step for W rows g and g + 8 and for x row g; the two k16 mma of the step take them as logical columns
// {2t, 2t+1, 2t+8, 2t+9} <- physical {8t, 8t+1, 8t+2, 8t+3}, then {8t+4 .. 8t+7}. No shuffle, no ldmatrix, and no
// thread reads another's slot, so the ring needs no barrier.
//
// Work split: kSplit warps per 16-row tile (8 or 16), splitting K; their partial tiles are summed in shared memory in
// warp order (deterministic) and the block applies the epilogue. The grid is persistent (16 warps per SM: two blocks of
// 8 warps, or one of 16; each block walks tiles): the norm prologue runs once per block, and the next tile's first W
// loads are in flight during the current one's reduction and epilogue. The split is picked per call
// (`pick_split`, from measurements): a shape with fewer tiles than SMs (Llama's o / down: 128 tiles
// for 132 SMs) needs 16 warps per tile to keep every SM's loads in flight. Row tiles can pair rows instead of taking
// 16 consecutive ones: mma rows g come from the first half of a pair and rows g + 8 from the second, `pair` rows
// later. That puts each rotary partner (d, d + head_dim/2) and each gate/up pair (j, j + n_out) in one lane after the
// reduction, so rotary + KV write and silu * up are lane-local epilogues of the projection itself.
//
// Every thread keeps up to kDecodeLinearMaxRing steps of W in flight (32 bytes per step; as many slots as the block's
// share of shared memory holds beside the staged rows), and the ring runs on across the block's tiles, so the stream
// does not drain at a tile's end. The first slots are filled before pdl_wait(), because no kernel of a step writes W:
// their HBM latency overlaps the previous kernel's tail and this kernel's norm prologue. W copies
// carry an L2 evict-first policy (a step streams far more weight than L2 holds; what it reads again stays). What the
// epilogue reads besides the sums (bias, residual, rotary entries, cache slot) is loaded when a tile starts, so that
// round trip overlaps the W stream instead of following the reduction.
// The norm prologue computes each row's statistics from x in the block after the wait (RMSNorm: 1/rms; LayerNorm: the
// mean, then 1/std from the centered sum of squares, as layernorm.cu; at up to two 256-column chunks per warp from
// one load of x and the norm weights, else one warp per row) and writes the normalized rows to shared memory
// once, with HF's roundings (RMSNorm round(round(x * rstd) * w), LayerNorm round((x - mean) * rstd * w + b)); the
// main loop reads its x fragments from there. A hidden size whose 8 or 16 staged rows do not fit a block's shared
// memory is refused (eet_hf/ops/decode.py runs the reference).
//
// Only the (norm, epilogue) pairs the fused decoder step runs are instantiated (`dispatch` in decode_linear_launch.cuh),
// which keeps the JIT build short; eet_hf/ops/decode.py sends every other call to its reference. The kernels are in
// decode_linear_kernel.cuh, their launches in decode_linear_launch.cuh, one file per split (decode_linear_split*.cu);
// this file is the host side that picks the split.
#include <cstdint>

#include "common.cuh"
#include "decode_linear.h"
#include "decode_linear_splits.h"

namespace eet {

int64_t decode_linear_out_cols(const DecodeLinearParams& p) {
  switch (p.epilogue) {
    case DecodeEpilogue::kSiluMul:
    case DecodeEpilogue::kGeluTanhMul:
      return p.rows / 2;
    case DecodeEpilogue::kRotaryKv:
      return static_cast<int64_t>(p.heads_q) * p.head_dim;
    default:
      return p.rows;
  }
}

bool decode_linear_has_kernel(DecodeNorm norm, DecodeEpilogue epilogue) {
  return decode_linear_split8(DType::kFloat16, nullptr, norm, epilogue, nullptr) == cudaSuccess;
}

namespace {

// The work split a call runs: p.warps_per_tile if set, else the one measured fastest for the shape.
int pick_split(const DecodeLinearParams& p) {
  if (p.warps_per_tile != 0) return p.warps_per_tile;
  // Measured on an H100 (evaluation/results/decode-linear-splits-h100.md, decode steps of Llama-3.2-1B, Qwen3-1.7B and
  // GPT-2 XL): 16 warps per tile win where the tiles do not fill the SMs (o / down / proj: 100-128 tiles, 20-30%
  // faster than 8, which leaves half the SMs' warps idle) and on LM heads of many rounds whose K splits into 16 equal
  // slices (128k-152k x 2048: 8-9%); 8 wins or ties everywhere else (QKV, gate/up, fc, GPT-2 XL's LM head, where K =
  // 1600 leaves the 16 slices uneven). 2 warps per tile (several tiles per block) never won and was dropped.
  const int64_t tiles = (p.rows + 15) / 16, steps = (p.k + 31) / 32;
  if (tiles <= p.num_sms) return 16;
  if (steps % 16 == 0 && tiles >= 32 * static_cast<int64_t>(p.num_sms)) return 16;
  return 8;
}

}  // namespace

cudaError_t decode_linear(DType dtype, const DecodeLinearParams& p, cudaStream_t stream) {
  const bool gated = p.epilogue == DecodeEpilogue::kSiluMul || p.epilogue == DecodeEpilogue::kGeluTanhMul;
  const bool paired_rows = gated || p.epilogue == DecodeEpilogue::kRotaryKv;  // tile_row pairs whole 16-row tiles
  if (p.m < 1 || p.m > kDecodeLinearMaxRows || p.k <= 0 || p.k % 8 != 0 || p.rows <= 0 ||
      (paired_rows && p.rows % 16 != 0) || p.ldx % 8 != 0 || p.ldw % 8 != 0 || !is_aligned(p.x, 16) || !is_aligned(p.weight, 16) ||
      !is_aligned(p.norm_weight, 16) || !is_aligned(p.norm_bias, 16) || p.num_sms <= 0 ||
      (p.warps_per_tile != 0 && p.warps_per_tile != 8 && p.warps_per_tile != 16)) {
    return cudaErrorInvalidValue;
  }
  if ((p.norm == DecodeNorm::kNone) != (p.norm_weight == nullptr) ||
      (p.norm_bias != nullptr && p.norm != DecodeNorm::kLayer) || !decode_linear_has_kernel(p.norm, p.epilogue)) {
    return cudaErrorInvalidValue;
  }
  if (p.epilogue == DecodeEpilogue::kRotaryKv &&
      (p.head_dim % 16 != 0 || p.heads_q <= 0 || p.heads_kv <= 0 || (p.cos == nullptr) != (p.sin == nullptr) ||
       p.rows != static_cast<int64_t>(p.heads_q + 2 * p.heads_kv) * p.head_dim)) {
    return cudaErrorInvalidValue;
  }
  int split = pick_split(p);
  if (p.norm != DecodeNorm::kNone) {
    const int64_t staged = decode_linear_staged_bytes(p.m, p.k);
    if (decode_linear_norm_min_smem(p.m, p.k) > p.smem_per_block) return cudaErrorInvalidValue;
    // Two blocks of 8 warps per SM need the staged rows twice; where they do not fit beside the smallest ring, one
    // block of 16 keeps 16 warps.
    if (p.warps_per_tile == 0 && split == 8 &&
        2 * (staged + kDecodeLinearStaticSmem8 + kDecodeLinearMinRing * decode_linear_ring_slot_bytes(8, 0) +
             kSmemReservedPerBlock) > p.smem_per_sm) {
      split = 16;
    }
  }
  switch (split) {
    case 8: return decode_linear_split8(dtype, &p, p.norm, p.epilogue, stream);
    case 16: return decode_linear_split16(dtype, &p, p.norm, p.epilogue, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace eet
