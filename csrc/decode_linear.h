// Decode-step linear layers over nn.Linear weights (decode_linear.cu): out = epilogue(norm(x) @ W^T + bias) for
// 1-16 rows, W [rows, K] with K contiguous (Llama, Mistral, Qwen2, Qwen3, Phi-3, OPT: q/k/v, o, gate/up or fc1,
// down or fc2, lm_head; GPT-2's Conv1D weights through their transposed packing, eet_hf/engine/packing.py).
// Plain pointers, sizes and a stream; no torch types (bindings_decode_linear.cpp checks the tensors).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace eet {

// The norm the prologue applies to x, in HF's order and roundings:
// - kNone:  x as it is
// - kRms:   round(round(x * rsqrt(mean(x^2) + eps)) * w)                    (LlamaRMSNorm; rmsnorm.cu)
// - kLayer: round((x - mean) * rstd * w + b), rstd = rsqrt(var + eps), var biased, all in fp32 and rounded once
//           (torch's layer_norm in fp16/bf16: HF's nn.LayerNorm, OPT)
enum class DecodeNorm : int { kNone = 0, kRms = 1, kLayer = 2 };

// What happens to y = x @ W^T + bias (fp32 accumulation, y rounded to the storage type T as HF's linear is):
// - kStore:       out = y
// - kResidual:    out = round(residual + y)                          (o_proj / down_proj + the residual add)
// - kSiluMul:     out = round(round(silu(y_gate)) * y_up)             (HF's act_fn(gate_proj(x)) * up_proj(x))
// - kGeluTanhMul: out = round(round(gelu_tanh(y_gate)) * y_up)        (Gemma's gelu_pytorch_tanh-gated MLP)
// - kRotaryKv:    q/k/v rows of a packed QKV projection; q and k rotated with HF's apply_rotary_pos_emb roundings
//                 (cos == nullptr: not rotated, OPT), q times q_scale when it is not 1 (round(round(q) * q_scale):
//                 OPT's `q_proj(x) * scaling`), q written to out [m, heads_q, head_dim], k and v into the caches at
//                 write_pos[row]
// - kRelu:        out = y < 0 ? 0 : y                                (HF's relu(fc1(x)), OPT; NaN stays NaN)
// - kGeluNew:     out = gelu_new(y) with torch's roundings op by op    (HF's NewGELUActivation(c_fc(x)), GPT-2)
// The gated epilogues read W as [gate; up] (gate rows 0..n_out-1, up rows n_out..2*n_out-1): the same packing as
// the packed parameter HF's gate_proj / up_proj weights are views of.
enum class DecodeEpilogue : int { kStore = 0, kResidual = 1, kSiluMul = 2, kGeluTanhMul = 3, kRotaryKv = 4, kRelu = 5,
                                   kGeluNew = 6 };

constexpr int64_t kDecodeLinearMaxRows = 16;

// A norm kernel stages its m normalized x rows in shared memory, each decode_linear_staged_ld(k) elements apart (the
// fragments of rows >= m are zeros, never read). The row stride is 16 bytes more than a multiple of 128, so a warp's
// 16-byte fragment reads (8 rows x 4 columns) fall in 8 different 16-byte bank groups, 4 lanes each: the minimum of 4
// wavefronts.
constexpr int64_t decode_linear_staged_ld(int64_t k) { return (k + 63) / 64 * 64 + 8; }
constexpr int64_t decode_linear_staged_rows_bytes(int64_t m, int64_t k) { return m * decode_linear_staged_ld(k) * 2; }
// The norm prologue of a few rows spreads each row's 256-column chunks over the warps (kNormHeld per warp) and sums
// the rows' statistics in shared memory after the staged rows: two [16][kNormMaxChunks] float arrays.
constexpr int kNormChunk = 256;
constexpr int kNormMaxChunks = 32;
constexpr int kNormHeld = 2;
constexpr int64_t kDecodeLinearNormStatsBytes = 2 * 16 * kNormMaxChunks * 4;
constexpr int64_t decode_linear_staged_bytes(int64_t m, int64_t k) {
  return decode_linear_staged_rows_bytes(m, k) + kDecodeLinearNormStatsBytes;
}
// Shared memory a block of 16 warps needs besides the staged rows (the partial tiles, 16 x 17 floats per warp), and
// what the hardware reserves per block.
constexpr int64_t kDecodeLinearStaticSmem16 = 16 * 16 * 17 * 4;
constexpr int64_t kDecodeLinearStaticSmem8 = 8 * 16 * 17 * 4;
constexpr int64_t kSmemReservedPerBlock = 1024;
// The W ring: every thread keeps its next steps' fragments in shared memory, one slot per step in flight, 16 bytes for
// each of its two W rows (and, without a norm, for each of its x fragments). The launch takes as many slots as the
// block's share of the multiprocessor's shared memory holds, up to kDecodeLinearMaxRing, and at least
// kDecodeLinearMinRing (a norm whose staged rows leave less is refused).
constexpr int kDecodeLinearMaxRing = 8;
constexpr int kDecodeLinearMinRing = 2;
constexpr int64_t decode_linear_ring_slot_bytes(int warps, int x_fragments) {
  return static_cast<int64_t>(2 + x_fragments) * 16 * warps * 32;
}
// What a norm kernel needs at the least with 16 warps per block (the staged rows, the partial tiles, two ring slots).
constexpr int64_t decode_linear_norm_min_smem(int64_t m, int64_t k) {
  return decode_linear_staged_bytes(m, k) + kDecodeLinearStaticSmem16 +
         kDecodeLinearMinRing * decode_linear_ring_slot_bytes(16, 0);
}

struct DecodeLinearParams {
  const void* x;            // [m, k], row stride ldx, 16-byte aligned rows
  const void* weight;       // [rows, k], row stride ldw (nn.Linear layout), 16-byte aligned rows
  const void* bias;         // [rows] or nullptr
  const void* norm_weight;  // [k], nullptr with kNone
  const void* norm_bias;    // [k] or nullptr (kLayer only)
  const void* residual;     // [m, n_out], row stride ld_res (kResidual), else nullptr
  void* out;                // [m, n_out] contiguous; kRotaryKv: q [m, heads_q * head_dim]
  int64_t m, rows, k, ldx, ldw, ld_res;
  float eps;
  DecodeNorm norm;
  DecodeEpilogue epilogue;
  // kRotaryKv only.
  const void* cos;            // [m, head_dim], row stride ld_cs; nullptr together with sin: no rotary
  const void* sin;            // [m, head_dim], row stride ld_cs
  void* k_cache;              // [m, heads_kv, cache_len, head_dim], strides k_stride (elements)
  void* v_cache;              // [m, heads_kv, cache_len, head_dim], strides v_stride (elements)
  const int32_t* write_pos;   // [m]: the cache slot each row's key and value go to; outside [0, cache_len): skipped
  int64_t ld_cs, cache_len;
  int64_t k_stride[3], v_stride[3];
  float q_scale;  // 1: q as projected (and rotated)
  int heads_q, heads_kv, head_dim;
  int num_sms;  // the device's multiprocessor count: sizes the persistent grid
  int64_t smem_per_block, smem_per_sm;  // the device's shared memory: per block (opt-in) and per multiprocessor
  int warps_per_tile;  // the work split: 8 or 16 warps per 16-row tile; 0: the one measured fastest for the shape (decode_linear.cu)
  int ring_depth;      // set by the launch: W steps each thread keeps in flight (kDecodeLinearMinRing..kDecodeLinearMaxRing)
};

// Output columns of the epilogue: rows for kStore / kResidual / kRelu / kGeluNew, rows / 2 for the gated ones, heads_q * head_dim
// for kRotaryKv.
int64_t decode_linear_out_cols(const DecodeLinearParams& p);

// Whether a kernel is built for this (norm, epilogue) pair: only the pairs the fused decoder step runs are
// (eet_hf/ops/decode.py KERNEL_PAIRS lists the same ones and sends every other call to the reference).
bool decode_linear_has_kernel(DecodeNorm norm, DecodeEpilogue epilogue);

// cudaErrorInvalidValue (nothing launched) for what the kernel does not take: fp32, m outside [1, 16], k not a
// multiple of 8, a norm whose staged rows do not fit a block's shared memory beside two W ring slots (16 rows: k up to
// ~5,500 on an H100), warps_per_tile other than 0, 8 or 16, rows not a multiple of 16 for the paired epilogues (gated, rotary), a rotary head_dim not a multiple of 16, a (norm, epilogue) pair
// without a kernel.
cudaError_t decode_linear(DType dtype, const DecodeLinearParams& p, cudaStream_t stream);

}  // namespace eet
