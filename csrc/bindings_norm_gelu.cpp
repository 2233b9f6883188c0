// CUDA entry points of the normalization and activation ops: layer_norm, add_layer_norm, rms_norm, bias_gelu
// (kernels in layernorm.cu, rmsnorm.cu, activation.cu). Argument checks and the device guard (bindings.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>
#include <string>
#include <tuple>

#include "bindings.h"
#include "kernels.h"

namespace eet {
namespace bindings {
namespace {

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
    check_same_device(*residual_in, x_in, op, "residual", "x");
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

}  // namespace

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

}  // namespace bindings
}  // namespace eet
