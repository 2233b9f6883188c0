// CUDA implementations of the eet ops. The schemas are declared once, in eet_hf/ops/_library.py, so that
// machines without a GPU have the same ops (reference implementations); this file registers the CUDA
// kernels for them. It is the only file that includes torch: it checks arguments with messages a user
// can act on, maps dtypes, and launches on the current stream under a device guard.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "kernels.h"

namespace {

// Error messages are built here, without iostreams: on the H200 image (torch 2.11), streaming an integer
// through this extension's ostream (what TORCH_CHECK's variadic message does) segfaulted inside libstdc++'s
// number formatting, so every op error killed the process (cuda-gdb backtrace in the session notes).
// TORCH_CHECK with one std::string argument passes it through without a stream.
std::string msg_piece(const char* s) { return s; }
std::string msg_piece(const std::string& s) { return s; }
std::string msg_piece(int64_t v) { return std::to_string(v); }
std::string msg_piece(int v) { return std::to_string(v); }
std::string msg_piece(double v) { return std::to_string(v); }
std::string msg_piece(c10::ScalarType t) { return c10::toString(t); }
std::string msg_piece(const c10::Device& d) { return d.str(); }
std::string msg_piece(at::IntArrayRef dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

template <typename... Args>
std::string msg(const Args&... args) {
  std::string out;
  ((out += msg_piece(args)), ...);
  return out;
}

eet::DType to_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return eet::DType::kFloat32;
    case at::kHalf: return eet::DType::kFloat16;
    case at::kBFloat16: return eet::DType::kBFloat16;
    default:
      TORCH_CHECK(false, msg("eet::", op, ": dtype must be float32, float16 or bfloat16, got ", t.scalar_type()));
  }
}

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), msg("eet::", op, ": ", name, " must be a CUDA tensor, got ", t.device()));
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, msg("eet::", op, ": kernel launch failed: ", cudaGetErrorString(err)));
}

// A [hidden] parameter vector matching x's last dim and dtype.
void check_vector(const at::Tensor& p, const at::Tensor& x, const char* op, const char* name) {
  check_cuda(p, op, name);
  TORCH_CHECK(p.dim() == 1 && p.size(0) == x.size(-1), msg("eet::", op, ": ", name, " must have shape [", x.size(-1), "], got ", p.sizes()));
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), msg("eet::", op, ": ", name, " dtype ", p.scalar_type(), " differs from x dtype ", x.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor> layer_norm_impl(const at::Tensor& x_in, const std::optional<at::Tensor>& residual_in,
                                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                   double eps, const char* op) {
  check_cuda(x_in, op, "x");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, msg("eet::", op, ": x must have a non-empty last dim, got ", x_in.sizes()));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = to_dtype(x_in, op);
  check_vector(weight, x_in, op, "weight");
  if (bias) check_vector(*bias, x_in, op, "bias");
  const at::Tensor x = x_in.contiguous();
  at::Tensor residual;
  if (residual_in) {
    check_cuda(*residual_in, op, "residual");
    TORCH_CHECK(residual_in->sizes() == x_in.sizes() && residual_in->scalar_type() == x_in.scalar_type(), msg("eet::", op, ": residual must match x in shape and dtype, got ", residual_in->sizes(), " ", residual_in->scalar_type(), " vs ", x_in.sizes(), " ", x_in.scalar_type()));
    residual = residual_in->contiguous();
  }
  at::Tensor out = at::empty_like(x);
  at::Tensor sum = residual_in ? at::empty_like(x) : at::Tensor();
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden ? x.numel() / hidden : 0;
  if (rows > 0) {
    check_launch(eet::layer_norm(dtype, x.data_ptr(), residual_in ? residual.data_ptr() : nullptr,
                                 weight.contiguous().data_ptr(), bias ? bias->contiguous().data_ptr() : nullptr,
                                 out.data_ptr(), residual_in ? sum.data_ptr() : nullptr, rows, hidden,
                                 static_cast<float>(eps), at::cuda::getCurrentCUDAStream()),
                 op);
  }
  return {out, sum};
}

// LayerNorm over the last dim (GPT-2 ln_1 / ln_f).
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      double eps) {
  return std::get<0>(layer_norm_impl(x, std::nullopt, weight, bias, eps, "layer_norm"));
}

// Residual add fused with LayerNorm: returns (LayerNorm(x + residual), x + residual).
std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                  double eps) {
  return layer_norm_impl(x, residual, weight, bias, eps, "add_layer_norm");
}

// RMSNorm over the last dim, HF Llama order (generic adapter: Llama, Mistral, Qwen2 norms).
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  const char* op = "rms_norm";
  check_cuda(x_in, op, "x");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, msg("eet::rms_norm: x must have a non-empty last dim, got ", x_in.sizes()));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = to_dtype(x_in, op);
  check_vector(weight, x_in, op, "weight");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t hidden = x.size(-1);
  const int64_t rows = x.numel() / hidden;
  if (rows > 0) {
    check_launch(eet::rms_norm(dtype, x.data_ptr(), weight.contiguous().data_ptr(), out.data_ptr(), rows, hidden,
                               static_cast<float>(eps), at::cuda::getCurrentCUDAStream()),
                 op);
  }
  return out;
}

// gelu(x + bias): "tanh" (GPT-2 gelu_new) or "none" (exact erf, BERT).
at::Tensor bias_gelu(const at::Tensor& x_in, const std::optional<at::Tensor>& bias, c10::string_view approximate) {
  const char* op = "bias_gelu";
  check_cuda(x_in, op, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = to_dtype(x_in, op);
  TORCH_CHECK(approximate == "tanh" || approximate == "none" || approximate == "tanh_staged",
              msg("eet::bias_gelu: approximate must be 'tanh', 'tanh_staged' or 'none', got '", std::string(approximate),
                  "'"));
  if (bias) check_vector(*bias, x_in, op, "bias");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  const int64_t rows = cols ? x.numel() / cols : 0;
  if (rows > 0 && cols > 0) {
    check_launch(eet::bias_gelu(dtype, x.data_ptr(), bias ? bias->contiguous().data_ptr() : nullptr, out.data_ptr(), rows,
                                cols, approximate == "tanh" ? eet::GeluKind::kTanh : approximate == "tanh_staged" ? eet::GeluKind::kTanhStaged : eet::GeluKind::kErf,
                                at::cuda::getCurrentCUDAStream()),
                 op);
  }
  return out;
}

void check_bounds(const at::Tensor& t, int64_t batch, const char* name) {
  check_cuda(t, "attention", name);
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.size(0) == batch && t.is_contiguous(), msg("eet::attention: ", name, " must be a contiguous int32 tensor of shape [", batch, "], got ", t.scalar_type(), " ", t.sizes()));
}

// Head dims without a kernel instantiation: the same function through torch's SDPA with a materialized
// mask. Correct, not fast; rows that see no key are zeroed to keep the kernels' contract.
at::Tensor attention_sdpa_fallback(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& kv_start, const at::Tensor& kv_end, const at::Tensor& q_offset,
                                   bool causal, double scale) {
  const int64_t q_len = q.size(2), kv_len = k.size(2);
  const auto idx_opts = at::TensorOptions().device(q.device()).dtype(at::kInt);
  const at::Tensor j = at::arange(kv_len, idx_opts).view({1, 1, kv_len});
  const at::Tensor i = at::arange(q_len, idx_opts).view({1, q_len, 1});
  at::Tensor visible = (j >= kv_start.view({-1, 1, 1})) & (j < kv_end.view({-1, 1, 1}));
  if (causal) visible = visible & (j <= q_offset.view({-1, 1, 1}) + i);
  visible = visible.expand({q.size(0), q_len, kv_len});
  const int64_t groups = q.size(1) / k.size(1);
  const at::Tensor kk = groups > 1 ? k.repeat_interleave(groups, 1) : k;
  const at::Tensor vv = groups > 1 ? v.repeat_interleave(groups, 1) : v;
  at::Tensor out = at::scaled_dot_product_attention(q, kk, vv, visible.unsqueeze(1), 0.0, false, scale);
  const at::Tensor any_visible = visible.any(-1).view({q.size(0), 1, q_len, 1});
  out = at::where(any_visible, out, at::zeros({}, out.options()));
  return out.transpose(1, 2).contiguous();
}

// Attention with in-kernel masks from per-sequence bounds (see kernels.h for the visibility rule).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_start,
                     const at::Tensor& kv_end, const at::Tensor& q_offset, bool causal, double scale) {
  const char* op = "attention";
  check_cuda(q, op, "q");
  check_cuda(k, op, "k");
  check_cuda(v, op, "v");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto dtype = to_dtype(q, op);
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, msg("eet::attention: q, k, v must be 4-D [batch, heads, seq, head_dim], got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes()));
  TORCH_CHECK(k.sizes() == v.sizes(), msg("eet::attention: k and v shapes differ: ", k.sizes(), " vs ", v.sizes()));
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), msg("eet::attention: q, k, v dtypes differ: ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type()));
  const int64_t batch = q.size(0), heads_q = q.size(1), q_len = q.size(2), head_dim = q.size(3);
  const int64_t heads_kv = k.size(1), kv_len = k.size(2);
  TORCH_CHECK(k.size(0) == batch && k.size(3) == head_dim, msg("eet::attention: k shape ", k.sizes(), " does not match q shape ", q.sizes()));
  TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, msg("eet::attention: query heads (", heads_q, ") must be a multiple of key/value heads (", heads_kv, ")"));
  check_bounds(kv_start, batch, "kv_start");
  check_bounds(kv_end, batch, "kv_end");
  check_bounds(q_offset, batch, "q_offset");
  TORCH_CHECK(q_len < INT32_MAX && kv_len < INT32_MAX, msg("eet::attention: sequence lengths must fit in int32"));

  at::Tensor out = at::empty({batch, q_len, heads_q, head_dim}, q.options());
  if (out.numel() == 0) return out;
  if (!eet::attention_supports_head_dim(static_cast<int>(head_dim))) {
    return attention_sdpa_fallback(q, k, v, kv_start, kv_end, q_offset, causal, scale);
  }
  // The kernels read rows of head_dim contiguous elements.
  const at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous();
  const at::Tensor kc = k.stride(3) == 1 ? k : k.contiguous();
  const at::Tensor vc = v.stride(3) == 1 ? v : v.contiguous();

  eet::AttentionParams p{};
  p.q = qc.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.out = out.data_ptr();
  p.q_stride_b = qc.stride(0), p.q_stride_h = qc.stride(1), p.q_stride_s = qc.stride(2);
  p.k_stride_b = kc.stride(0), p.k_stride_h = kc.stride(1), p.k_stride_s = kc.stride(2);
  p.v_stride_b = vc.stride(0), p.v_stride_h = vc.stride(1), p.v_stride_s = vc.stride(2);
  p.kv_start = kv_start.data_ptr<int32_t>();
  p.kv_end = kv_end.data_ptr<int32_t>();
  p.q_offset = q_offset.data_ptr<int32_t>();
  p.batch = static_cast<int>(batch), p.heads_q = static_cast<int>(heads_q), p.heads_kv = static_cast<int>(heads_kv);
  p.q_len = static_cast<int>(q_len), p.kv_len = static_cast<int>(kv_len), p.head_dim = static_cast<int>(head_dim);
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const size_t ws_bytes = eet::attention_workspace_bytes(p, num_sms);
  at::Tensor workspace;
  if (ws_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
  }
  check_launch(eet::attention(dtype, p, num_sms, at::cuda::getCurrentCUDAStream()), op);
  return out;
}

// attention_varlen for head dims without a kernel instantiation: SDPA over all tokens with a block-diagonal
// [tokens, tokens] mask built on the device from cu_seqlens. Correct, not fast.
at::Tensor attention_varlen_sdpa_fallback(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& cu_seqlens, bool causal, double scale) {
  const int64_t tokens = q.size(0);
  const auto idx_opts = at::TensorOptions().device(q.device()).dtype(at::kInt);
  const at::Tensor pos = at::arange(tokens, idx_opts);
  const at::Tensor seq = at::searchsorted(cu_seqlens.slice(0, 1), pos, /*out_int32=*/true, /*right=*/true);
  at::Tensor visible = seq.view({-1, 1}) == seq.view({1, -1});
  if (causal) visible = visible & (pos.view({1, -1}) <= pos.view({-1, 1}));
  const int64_t groups = q.size(1) / k.size(1);
  const at::Tensor kk = groups > 1 ? k.repeat_interleave(groups, 1) : k;
  const at::Tensor vv = groups > 1 ? v.repeat_interleave(groups, 1) : v;
  const at::Tensor out = at::scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), kk.transpose(0, 1).unsqueeze(0),
                                                          vv.transpose(0, 1).unsqueeze(0), visible.view({1, 1, tokens, tokens}),
                                                          0.0, false, scale);
  return out.squeeze(0).transpose(0, 1).contiguous();
}

// Attention over packed sequences (no padding stored): q [tokens, heads_q, head_dim], k/v [tokens, heads_kv,
// head_dim], sequence b = rows [cu_seqlens[b], cu_seqlens[b+1]). Any strides but a contiguous last dim, so
// q, k, v may be views into one packed QKV GEMM output. cu_seqlens is trusted (read on the device only):
// cu_seqlens[0] == 0, non-decreasing, cu_seqlens[-1] == tokens, every length <= max_seqlen.
at::Tensor attention_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                            int64_t max_seqlen, bool causal, double scale) {
  const char* op = "attention_varlen";
  check_cuda(q, op, "q");
  check_cuda(k, op, "k");
  check_cuda(v, op, "v");
  check_cuda(cu_seqlens, op, "cu_seqlens");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto dtype = to_dtype(q, op);
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, msg("eet::attention_varlen: q, k, v must be 3-D [tokens, heads, head_dim], got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes()));
  TORCH_CHECK(k.sizes() == v.sizes(), msg("eet::attention_varlen: k and v shapes differ: ", k.sizes(), " vs ", v.sizes()));
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), msg("eet::attention_varlen: q, k, v dtypes differ: ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type()));
  const int64_t tokens = q.size(0), heads_q = q.size(1), head_dim = q.size(2), heads_kv = k.size(1);
  TORCH_CHECK(k.size(0) == tokens && k.size(2) == head_dim, msg("eet::attention_varlen: k shape ", k.sizes(), " does not match q shape ", q.sizes()));
  TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, msg("eet::attention_varlen: query heads (", heads_q, ") must be a multiple of key/value heads (", heads_kv, ")"));
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt && cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 &&
                  cu_seqlens.is_contiguous(), msg("eet::attention_varlen: cu_seqlens must be a contiguous int32 tensor of shape [batch + 1], got ", cu_seqlens.scalar_type(), " ", cu_seqlens.sizes()));
  TORCH_CHECK(max_seqlen >= 0 && max_seqlen < INT32_MAX && tokens < INT32_MAX, msg("eet::attention_varlen: max_seqlen and tokens must fit in int32, got ", max_seqlen, " and ", tokens));
  const int64_t batch = cu_seqlens.size(0) - 1;

  at::Tensor out = at::empty({tokens, heads_q, head_dim}, q.options());
  if (out.numel() == 0 || batch == 0) return out;
  if (!eet::attention_supports_head_dim(static_cast<int>(head_dim))) {
    return attention_varlen_sdpa_fallback(q, k, v, cu_seqlens, causal, scale);
  }
  const at::Tensor qc = q.stride(2) == 1 ? q : q.contiguous();
  const at::Tensor kc = k.stride(2) == 1 ? k : k.contiguous();
  const at::Tensor vc = v.stride(2) == 1 ? v : v.contiguous();

  eet::AttentionParams p{};
  p.q = qc.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.out = out.data_ptr();
  p.q_stride_h = qc.stride(1), p.q_stride_s = qc.stride(0);
  p.k_stride_h = kc.stride(1), p.k_stride_s = kc.stride(0);
  p.v_stride_h = vc.stride(1), p.v_stride_s = vc.stride(0);
  p.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  p.batch = static_cast<int>(batch), p.heads_q = static_cast<int>(heads_q), p.heads_kv = static_cast<int>(heads_kv);
  p.q_len = static_cast<int>(max_seqlen), p.kv_len = static_cast<int>(max_seqlen);
  p.head_dim = static_cast<int>(head_dim);
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  check_launch(eet::attention(dtype, p, num_sms, at::cuda::getCurrentCUDAStream()), op);
  return out;
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  check_cuda(t, op, name);
  TORCH_CHECK(t.device() == ref.device(), msg("eet::", op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device()));
}

void check_token_indices(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, msg("eet::embedding: ", name, " must be 2-D [batch, seq], got shape ", t.sizes()));
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, msg("eet::embedding: ", name, " must be int64 or int32, got ", t.scalar_type()));
}

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

}  // namespace

TORCH_LIBRARY_IMPL(eet, CUDA, m) {
  // LayerNorm, GPT-2 ln_1 / ln_f.
  m.impl("layer_norm", &layer_norm);
  // Residual add + LayerNorm: GPT-2 ln_2 (pre-LN) and BERT's output LayerNorms (post-LN).
  m.impl("add_layer_norm", &add_layer_norm);
  // Bias + GELU after a GEMM without bias: GPT-2 and BERT MLPs.
  m.impl("bias_gelu", &bias_gelu);
  // RMSNorm, HF Llama order: Llama / Mistral / Qwen2 norms through the generic adapter.
  m.impl("rms_norm", &rms_norm);
  // Prefill and decode attention with masks from per-sequence bounds.
  m.impl("attention", &attention);
  // Attention over packed (varlen) sequences: BERT's padding-free encoder path.
  m.impl("attention_varlen", &attention_varlen);
  // Token + position embeddings: GPT-2 wte + wpe.
  m.impl("embedding", &embedding);
  // Fused QKV (+ bias) split into q and the preallocated KV cache: GPT-2 c_attn output, prefill and decode.
  m.impl("kv_append", &kv_append);
}
