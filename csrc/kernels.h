// Host launchers of every eet kernel: plain pointers, sizes and a stream, no torch types.
// The bindings*.cpp files (the only ones that include torch) check arguments and call these; the .cu files
// implement them. Every launcher returns cudaSuccess or the launch error, never aborts.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace eet {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// GELU flavours HF uses: "tanh" is gelu_new / gelu_pytorch_tanh (GPT-2), "erf" is exact gelu (BERT).
// kTanhStaged is HF's NewGELUActivation (gelu_new: GPT-2, GPT-Neo) evaluated op by op as torch does in the
// storage dtype, every intermediate rounded to it: in bf16 those roundings move results by up to ~1%, enough to
// flip near-tied greedy tokens against HF, so eet reproduces them instead of computing gelu more exactly.
enum class GeluKind { kTanh, kErf, kTanhStaged };

// LayerNorm over the last dimension, fp32 statistics.
// With residual != nullptr: sum = x + residual (rounded to the storage dtype, as HF's `a + b` is),
// written to sum_out, and out = LayerNorm(sum). Without: out = LayerNorm(x), sum_out unused.
cudaError_t layer_norm(DType dtype,
                       const void* x,         // [rows, hidden]
                       const void* residual,  // [rows, hidden] or nullptr
                       const void* weight,    // [hidden]
                       const void* bias,      // [hidden] or nullptr
                       void* out,             // [rows, hidden]
                       void* sum_out,         // [rows, hidden]; required iff residual
                       int64_t rows, int64_t hidden, float eps, cudaStream_t stream);

// RMSNorm over the last dimension in HF Llama order: out = round(round(x * rsqrt(mean(x^2) + eps)) * weight),
// fp32 statistics (rmsnorm.cu).
cudaError_t rms_norm(DType dtype,
                     const void* x,       // [rows, hidden]
                     const void* weight,  // [hidden]
                     void* out,           // [rows, hidden]
                     int64_t rows, int64_t hidden, float eps, cudaStream_t stream);

// out = gelu(x + bias), computed in fp32. out may alias x.
cudaError_t bias_gelu(DType dtype,
                      const void* x,     // [rows, cols]
                      const void* bias,  // [cols] or nullptr
                      void* out,         // [rows, cols]
                      int64_t rows, int64_t cols, GeluKind kind, cudaStream_t stream);

// Attention with the mask computed from per-sequence bounds (mask fusion): for batch b, query row i
// and key j, the key is visible iff
//     kv_start[b] <= j < kv_end[b]   and   (!causal || j <= q_offset[b] + i).
// A query row that sees no key writes zeros. Grouped-query: query head h reads kv head
// h / (heads_q / heads_kv). q, k, v have a contiguous last dim and arbitrary other strides
// (elements); out is [batch, q_len, heads_q, head_dim], contiguous.
struct AttentionParams {
  const void* q;  // [batch, heads_q, q_len, head_dim]
  const void* k;  // [batch, heads_kv, kv_len, head_dim]
  const void* v;  // [batch, heads_kv, kv_len, head_dim]
  void* out;      // [batch, q_len, heads_q, head_dim]
  int64_t q_stride_b, q_stride_h, q_stride_s;
  int64_t k_stride_b, k_stride_h, k_stride_s;
  int64_t v_stride_b, v_stride_h, v_stride_s;
  const int32_t* kv_start;  // [batch]
  const int32_t* kv_end;    // [batch]
  const int32_t* q_offset;  // [batch]
  int batch, heads_q, heads_kv, q_len, kv_len, head_dim;
  float scale;
  bool causal;
  void* workspace;  // attention_workspace_bytes(...) bytes, or nullptr when that is 0
  // Packed (varlen) layout when set: sequence b owns rows [cu_seqlens[b], cu_seqlens[b+1]) of one token axis
  // shared by q, k, v and out (q, k, v: [tokens, heads, head_dim], the *_stride_b unused, out [tokens,
  // heads_q, head_dim]); key j is visible to query i of the same sequence iff !causal || j <= i, and
  // kv_start / kv_end / q_offset are unused. q_len = kv_len = the longest sequence (query tiles past a
  // sequence's own length exit at once). Always the prefill kernels.
  const int32_t* cu_seqlens;  // [batch + 1] or nullptr (padded layout)
};

// Scratch the chosen kernel needs (split-K partials for decode); 0 when none.
size_t attention_workspace_bytes(const AttentionParams& p, int num_sms);
cudaError_t attention(DType dtype, const AttentionParams& p, int num_sms, cudaStream_t stream);

// Head dims the attention kernels are instantiated for; others take the reference path in Python.
bool attention_supports_head_dim(int head_dim);

// out[b, s] = wte[ids[b, s]] + wpe[pos[b, s]] (fp32 sum, one rounding); without wpe just the wte row.
// A row whose id is outside [0, vocab) or position outside [0, positions) is written as NaN, never read
// out of bounds. Strides of ids / pos are in elements (0 broadcasts).
cudaError_t embedding(DType dtype,
                      const void* ids,  // [batch, seq], int64 if ids_int64 else int32
                      bool ids_int64, int64_t ids_stride_b, int64_t ids_stride_s,
                      const void* pos,  // [batch, seq], int64 if pos_int64 else int32; unused without wpe
                      bool pos_int64, int64_t pos_stride_b, int64_t pos_stride_s,
                      const void* wte,  // [vocab, hidden]
                      const void* wpe,  // [positions, hidden] or nullptr
                      void* out,        // [batch, seq, hidden]
                      int64_t batch, int64_t seq, int64_t vocab, int64_t positions, int64_t hidden,
                      cudaStream_t stream);

// out[r] = torch.argmax(x[r, :cols]): the first index of the row's largest value, a NaN counting as the largest
// (argmax.cu). x: [rows, cols] with row stride ld (elements), last dim contiguous; cols > 0.
cudaError_t argmax_rows(DType dtype, const void* x, int64_t* out, int64_t rows, int64_t cols, int64_t ld,
                        cudaStream_t stream);

// Per-row runs of real keys of an attention mask [rows, cols] (padding_runs.cu): start[r] / end[r] = the first
// nonzero column and one past the last (0 / 0 for a row without one); flags[0] = every row is one run of nonzeros
// (or none), flags[1] = no zero anywhere, flags[2] = every row is one run starting at column 0 (right padding).
// mask_bytes: 1 (bool / uint8 / int8), 4 (int32) or 8 (int64); row stride ld in elements, columns contiguous.
cudaError_t padding_runs(const void* mask, int mask_bytes, int64_t rows, int64_t cols, int64_t ld, int32_t* start,
                         int32_t* end, int32_t* flags, cudaStream_t stream);

// The encoder's in-place packing plan (eet_hf/encoder/packing.py) for runs [start[b], end[b]) of rows of length seq:
// cu_seqlens[3b .. 3b + 2] = b * seq + (0, s, e) with the run clamped to 0 <= s <= e <= seq, cu_seqlens[3 * batch] =
// batch * seq; real[b, p] = s <= p < e. batch * seq < 2^31.
cudaError_t in_place_packing(const int32_t* start, const int32_t* end, int64_t batch, int64_t seq,
                             int32_t* cu_seqlens, bool* real, cudaStream_t stream);

// Fused QKV projection output -> q and the KV cache, with the bias add (fp32, one rounding). Token s of
// sequence b goes to cache slot write_pos[b] + s; slots outside [0, cache_len) are skipped. Strides are
// in elements; every last dim is contiguous.
struct KvAppendParams {
  const void* qkv;   // [batch, seq, (heads_q + 2 * heads_kv) * head_dim], q|k|v blocks, each head-major
  const void* bias;  // [(heads_q + 2 * heads_kv) * head_dim] or nullptr
  void* k_cache;     // [batch, heads_kv, cache_len, head_dim]
  void* v_cache;     // [batch, heads_kv, cache_len, head_dim]
  const int32_t* write_pos;  // [batch]
  void* q_out;       // [batch, heads_q, seq, head_dim], contiguous
  int64_t qkv_stride_b, qkv_stride_s;
  int64_t k_stride_b, k_stride_h, k_stride_l;
  int64_t v_stride_b, v_stride_h, v_stride_l;
  int64_t batch, seq, cache_len;
  int heads_q, heads_kv, head_dim;
};

cudaError_t kv_append(DType dtype, const KvAppendParams& p, cudaStream_t stream);

// HF's apply_rotary_pos_emb on q and k in one launch, with HF's roundings (rotary.cu): the first `rot` dims of
// every head rotate (rotate_half form), the rest are copied. Strides in elements, [b, h, s] order; last dims
// contiguous. cos / sin are [batch or 1 (stride 0), seq, rot].
struct RotaryArgs {
  const void* q;  // [batch, heads_q, seq, head_dim]
  const void* k;  // [batch, heads_k, seq, head_dim]
  const void* cos;
  const void* sin;
  void* q_out;    // shaped as q
  void* k_out;    // shaped as k
  int64_t q_stride[3], k_stride[3], q_out_stride[3], k_out_stride[3], cs_stride[2];
  int64_t batch, seq, heads_q, heads_k, head_dim, rot;
};

cudaError_t rotary(DType dtype, const RotaryArgs& args, cudaStream_t stream);

// Small-batch linear layer (small_linear.cu): out[m, n] = act(round_T(sum_k x[m, k] * weight[k, n] + bias[n])),
// fp32 accumulation, for m <= kSmallLinearMaxRows (decode steps). The weight is GPT-2's Conv1D layout [K, N]
// with N contiguous. kGeluTanhStaged then applies HF's gelu_new with torch's roundings (gelu_staged.cuh), the
// same bits as bias_gelu's kTanhStaged on the rounded output.
enum class LinearActivation { kNone, kGeluTanhStaged };
constexpr int64_t kSmallLinearMaxRows = 8;

// How small_linear cuts the work: `tiles` column tiles x `splits` K-slices of `k_chunk` rows, one block each; the
// splits of a tile form one thread block cluster (splits <= 8) and reduce through distributed shared memory.
struct SmallLinearPlan {
  int64_t tiles, splits, k_chunk;
  bool forced;  // splits set by the caller (the sanitizer harness): not narrowed to the device's cluster fit
};
SmallLinearPlan small_linear_plan(DType dtype, int64_t m, int64_t n, int64_t k, int num_sms,
                                  int64_t forced_splits = 0);

struct SmallLinearParams {
  const void* x;       // [m, k], row stride ldx, last dim contiguous
  const void* weight;  // [k, n], row stride ldw, last dim contiguous
  const void* bias;    // [n] or nullptr
  void* out;           // [m, n], contiguous
  int64_t m, n, k, ldx, ldw;
  LinearActivation act;
};
cudaError_t small_linear(DType dtype, const SmallLinearParams& p, const SmallLinearPlan& plan, cudaStream_t stream);

}  // namespace eet
