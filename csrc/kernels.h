// Host launchers of every eet kernel: plain pointers, sizes and a stream, no torch types.
// bindings.cpp (the only file that includes torch) checks arguments and calls these; the .cu files
// implement them. Every launcher returns cudaSuccess or the launch error, never aborts.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace eet {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// GELU flavours HF uses: "tanh" is gelu_new / gelu_pytorch_tanh (GPT-2), "erf" is exact gelu (BERT).
enum class GeluKind { kTanh, kErf };

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
};

// Scratch the chosen kernel needs (split-K partials for decode); 0 when none.
size_t attention_workspace_bytes(const AttentionParams& p, int num_sms);
cudaError_t attention(DType dtype, const AttentionParams& p, int num_sms, cudaStream_t stream);

// Head dims the attention kernels are instantiated for; others take the reference path in Python.
bool attention_supports_head_dim(int head_dim);

}  // namespace eet
