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

eet::DType to_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return eet::DType::kFloat32;
    case at::kHalf: return eet::DType::kFloat16;
    case at::kBFloat16: return eet::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "eet::", op, ": dtype must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), "eet::", op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "eet::", op, ": kernel launch failed: ", cudaGetErrorString(err));
}

// A [hidden] parameter vector matching x's last dim and dtype.
void check_vector(const at::Tensor& p, const at::Tensor& x, const char* op, const char* name) {
  check_cuda(p, op, name);
  TORCH_CHECK(p.dim() == 1 && p.size(0) == x.size(-1), "eet::", op, ": ", name, " must have shape [",
              x.size(-1), "], got ", p.sizes());
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), "eet::", op, ": ", name, " dtype ", p.scalar_type(),
              " differs from x dtype ", x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> layer_norm_impl(const at::Tensor& x_in, const std::optional<at::Tensor>& residual_in,
                                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                   double eps, const char* op) {
  check_cuda(x_in, op, "x");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, "eet::", op, ": x must have a non-empty last dim, got ",
              x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = to_dtype(x_in, op);
  check_vector(weight, x_in, op, "weight");
  if (bias) check_vector(*bias, x_in, op, "bias");
  const at::Tensor x = x_in.contiguous();
  at::Tensor residual;
  if (residual_in) {
    check_cuda(*residual_in, op, "residual");
    TORCH_CHECK(residual_in->sizes() == x_in.sizes() && residual_in->scalar_type() == x_in.scalar_type(), "eet::", op,
                ": residual must match x in shape and dtype, got ", residual_in->sizes(), " ",
                residual_in->scalar_type(), " vs ", x_in.sizes(), " ", x_in.scalar_type());
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

// gelu(x + bias): "tanh" (GPT-2 gelu_new) or "none" (exact erf, BERT).
at::Tensor bias_gelu(const at::Tensor& x_in, const std::optional<at::Tensor>& bias, c10::string_view approximate) {
  const char* op = "bias_gelu";
  check_cuda(x_in, op, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = to_dtype(x_in, op);
  TORCH_CHECK(approximate == "tanh" || approximate == "none", "eet::bias_gelu: approximate must be 'tanh' or 'none', got '",
              std::string(approximate), "'");
  if (bias) check_vector(*bias, x_in, op, "bias");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  const int64_t rows = cols ? x.numel() / cols : 0;
  if (rows > 0 && cols > 0) {
    check_launch(eet::bias_gelu(dtype, x.data_ptr(), bias ? bias->contiguous().data_ptr() : nullptr, out.data_ptr(), rows,
                                cols, approximate == "tanh" ? eet::GeluKind::kTanh : eet::GeluKind::kErf,
                                at::cuda::getCurrentCUDAStream()),
                 op);
  }
  return out;
}

void check_bounds(const at::Tensor& t, int64_t batch, const char* name) {
  check_cuda(t, "attention", name);
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.size(0) == batch && t.is_contiguous(),
              "eet::attention: ", name, " must be a contiguous int32 tensor of shape [", batch, "], got ",
              t.scalar_type(), " ", t.sizes());
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
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "eet::attention: q, k, v must be 4-D [batch, heads, seq, head_dim], got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), "eet::attention: k and v shapes differ: ", k.sizes(), " vs ", v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "eet::attention: q, k, v dtypes differ: ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  const int64_t batch = q.size(0), heads_q = q.size(1), q_len = q.size(2), head_dim = q.size(3);
  const int64_t heads_kv = k.size(1), kv_len = k.size(2);
  TORCH_CHECK(k.size(0) == batch && k.size(3) == head_dim, "eet::attention: k shape ", k.sizes(),
              " does not match q shape ", q.sizes());
  TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, "eet::attention: query heads (", heads_q,
              ") must be a multiple of key/value heads (", heads_kv, ")");
  check_bounds(kv_start, batch, "kv_start");
  check_bounds(kv_end, batch, "kv_end");
  check_bounds(q_offset, batch, "q_offset");
  TORCH_CHECK(q_len < INT32_MAX && kv_len < INT32_MAX, "eet::attention: sequence lengths must fit in int32");

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

}  // namespace

TORCH_LIBRARY_IMPL(eet, CUDA, m) {
  // LayerNorm, GPT-2 ln_1 / ln_f.
  m.impl("layer_norm", &layer_norm);
  // Residual add + LayerNorm: GPT-2 ln_2 (pre-LN) and BERT's output LayerNorms (post-LN).
  m.impl("add_layer_norm", &add_layer_norm);
  // Bias + GELU after a GEMM without bias: GPT-2 and BERT MLPs.
  m.impl("bias_gelu", &bias_gelu);
  // Prefill and decode attention with masks from per-sequence bounds.
  m.impl("attention", &attention);
}
