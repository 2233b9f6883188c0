// CUDA entry points of the token-side ops: embedding (token + position gather, embedding.cu), kv_append (fused QKV
// split into q and the KV cache, kv_cache.cu) and argmax_rows (the greedy token of each row of logits, argmax.cu). Argument checks and the device guard (bindings.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <optional>

#include "bindings.h"
#include "kernels.h"

namespace eet {
namespace bindings {
namespace {

void check_token_indices(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, msg("eet::embedding: ", name, " must be 2-D [batch, seq], got shape ", t.sizes()));
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, msg("eet::embedding: ", name, " must be int64 or int32, got ", t.scalar_type()));
}

}  // namespace

// Token + position embeddings (GPT-2 wte + wpe) in one gather; out-of-range indices give NaN rows.
at::Tensor embedding(const at::Tensor& input_ids, const at::Tensor& position_ids, const at::Tensor& wte_in,
                     const std::optional<at::Tensor>& wpe_in) {
  const char* op = "embedding";
  check_cuda(wte_in, op, "wte");
  const c10::cuda::CUDAGuard guard(wte_in.device());
  const auto dtype = to_dtype(wte_in, op);
  check_same_device(input_ids, wte_in, op, "input_ids", "wte");
  check_same_device(position_ids, wte_in, op, "position_ids", "wte");
  check_token_indices(input_ids, "input_ids");
  check_token_indices(position_ids, "position_ids");
  TORCH_CHECK(position_ids.sizes() == input_ids.sizes(), msg("eet::embedding: position_ids shape ", position_ids.sizes(), " must equal input_ids shape ", input_ids.sizes(), " (a [1, seq] tensor can be broadcast for free with position_ids.expand(batch, -1))"));
  TORCH_CHECK(wte_in.dim() == 2, msg("eet::embedding: wte must be 2-D [vocab, hidden], got shape ", wte_in.sizes()));
  const at::Tensor wte = wte_in.contiguous();
  at::Tensor wpe;
  if (wpe_in) {
    check_same_device(*wpe_in, wte_in, op, "wpe", "wte");
    TORCH_CHECK(wpe_in->dim() == 2 && wpe_in->size(1) == wte.size(1), msg("eet::embedding: wpe must be [positions, ", wte.size(1), "] to match wte's hidden size, got shape ", wpe_in->sizes()));
    TORCH_CHECK(wpe_in->scalar_type() == wte.scalar_type(), msg("eet::embedding: wpe dtype ", wpe_in->scalar_type(), " differs from wte dtype ", wte.scalar_type()));
    wpe = wpe_in->contiguous();
  }
  const int64_t batch = input_ids.size(0), seq = input_ids.size(1), hidden = wte.size(1);
  at::Tensor out = at::empty({batch, seq, hidden}, wte.options());
  if (out.numel() == 0) return out;
  check_launch(eet::embedding(dtype, input_ids.data_ptr(), input_ids.scalar_type() == at::kLong, input_ids.stride(0),
                              input_ids.stride(1), position_ids.data_ptr(), position_ids.scalar_type() == at::kLong,
                              position_ids.stride(0), position_ids.stride(1), wte.data_ptr(),
                              wpe_in ? wpe.data_ptr() : nullptr, out.data_ptr(), batch, seq, wte.size(0),
                              wpe_in ? wpe.size(0) : 0, hidden, at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

// torch.argmax(x, dim=-1) of a 2-D x with a contiguous last dim, int64 [rows].
at::Tensor argmax_rows(const at::Tensor& x) {
  const char* op = "argmax_rows";
  check_cuda(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dtype = to_dtype(x, op);
  TORCH_CHECK(x.dim() == 2 && x.size(1) > 0, msg("eet::argmax_rows: x must be 2-D [rows, cols] with cols > 0, got shape ", x.sizes()));
  const at::Tensor rows = x.stride(1) == 1 && x.stride(0) >= x.size(1) ? x : x.contiguous();
  at::Tensor out = at::empty({rows.size(0)}, rows.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  check_launch(eet::argmax_rows(dtype, rows.data_ptr(), out.data_ptr<int64_t>(), rows.size(0), rows.size(1),
                                rows.stride(0), at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

// Fused QKV output (+ bias) -> q, and k / v written into the caches at write_pos[b] + s. Returns q.
at::Tensor kv_append(const at::Tensor& qkv_in, const std::optional<at::Tensor>& bias_in, at::Tensor& k_cache,
                     at::Tensor& v_cache, const at::Tensor& write_pos_in, int64_t heads_q, int64_t heads_kv) {
  const char* op = "kv_append";
  check_cuda(qkv_in, op, "qkv");
  const c10::cuda::CUDAGuard guard(qkv_in.device());
  const auto dtype = to_dtype(qkv_in, op);
  check_same_device(k_cache, qkv_in, op, "k_cache", "qkv");
  check_same_device(v_cache, qkv_in, op, "v_cache", "qkv");
  check_same_device(write_pos_in, qkv_in, op, "write_pos", "qkv");
  TORCH_CHECK(heads_q > 0 && heads_kv > 0 && heads_q + 2 * heads_kv <= INT32_MAX, msg("eet::kv_append: heads_q and heads_kv must be positive, got ", heads_q, " and ", heads_kv));
  TORCH_CHECK(qkv_in.dim() == 3, msg("eet::kv_append: qkv must be 3-D [batch, seq, (heads_q + 2 * heads_kv) * head_dim], ", "got shape ", qkv_in.sizes()));
  const int64_t batch = qkv_in.size(0), seq = qkv_in.size(1), width = qkv_in.size(2);
  const int64_t blocks = heads_q + 2 * heads_kv;
  TORCH_CHECK(width > 0 && width % blocks == 0, msg("eet::kv_append: qkv's last dim (", width, ") must be (heads_q + 2 * heads_kv) * head_dim = ", blocks, " * head_dim for heads_q=", heads_q, ", heads_kv=", heads_kv));
  const int64_t head_dim = width / blocks;
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(0) == batch && k_cache.size(1) == heads_kv &&
                  k_cache.size(3) == head_dim, msg("eet::kv_append: k_cache must be [", batch, ", ", heads_kv, ", cache_len, ", head_dim, "] (batch, heads_kv, cache_len, head_dim from qkv), got shape ", k_cache.sizes()));
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), msg("eet::kv_append: v_cache shape ", v_cache.sizes(), " differs from k_cache shape ", k_cache.sizes()));
  TORCH_CHECK(k_cache.scalar_type() == qkv_in.scalar_type() && v_cache.scalar_type() == qkv_in.scalar_type(), msg("eet::kv_append: cache dtypes (", k_cache.scalar_type(), ", ", v_cache.scalar_type(), ") must equal qkv dtype ", qkv_in.scalar_type()));
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, msg("eet::kv_append: k_cache and v_cache need a contiguous last dim (they are written in place, so a ", "copy would not do), got strides ", k_cache.strides(), " and ", v_cache.strides()));
  TORCH_CHECK(k_cache.data_ptr() != v_cache.data_ptr(), msg("eet::kv_append: k_cache and v_cache are the same memory"));
  TORCH_CHECK(write_pos_in.scalar_type() == at::kInt && write_pos_in.dim() == 1 && write_pos_in.size(0) == batch, msg("eet::kv_append: write_pos must be an int32 tensor of shape [", batch, "], got ", write_pos_in.scalar_type(), " ", write_pos_in.sizes()));
  at::Tensor bias;
  if (bias_in) {
    check_same_device(*bias_in, qkv_in, op, "bias", "qkv");
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == width, msg("eet::kv_append: bias must have shape [", width, "] (qkv's last dim), got ", bias_in->sizes()));
    TORCH_CHECK(bias_in->scalar_type() == qkv_in.scalar_type(), msg("eet::kv_append: bias dtype ", bias_in->scalar_type(), " differs from qkv dtype ", qkv_in.scalar_type()));
    bias = bias_in->contiguous();
  }
  const at::Tensor qkv = qkv_in.stride(2) == 1 ? qkv_in : qkv_in.contiguous();
  const at::Tensor write_pos = write_pos_in.contiguous();
  at::Tensor q = at::empty({batch, heads_q, seq, head_dim}, qkv.options());
  if (q.numel() == 0) return q;

  eet::KvAppendParams p{};
  p.qkv = qkv.data_ptr();
  p.bias = bias_in ? bias.data_ptr() : nullptr;
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.write_pos = write_pos.data_ptr<int32_t>();
  p.q_out = q.data_ptr();
  p.qkv_stride_b = qkv.stride(0), p.qkv_stride_s = qkv.stride(1);
  p.k_stride_b = k_cache.stride(0), p.k_stride_h = k_cache.stride(1), p.k_stride_l = k_cache.stride(2);
  p.v_stride_b = v_cache.stride(0), p.v_stride_h = v_cache.stride(1), p.v_stride_l = v_cache.stride(2);
  p.batch = batch, p.seq = seq, p.cache_len = k_cache.size(2);
  p.heads_q = static_cast<int>(heads_q), p.heads_kv = static_cast<int>(heads_kv);
  p.head_dim = static_cast<int>(head_dim);
  check_launch(eet::kv_append(dtype, p, at::cuda::getCurrentCUDAStream()), op);
  return q;
}

}  // namespace bindings
}  // namespace eet
