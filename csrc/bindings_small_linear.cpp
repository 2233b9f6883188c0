// CUDA entry point of eet::small_linear (small_linear.cu): the decode-step linear layer (x [m <= 8, K] @ W [K, N]
// + bias, optional fused gelu_new). Argument checks and the device guard (bindings.h); the output is a new
// contiguous [m, N] tensor.
//
// No scratch: split-K partials are reduced inside a thread block cluster (small_linear.cu), so a launch needs nothing
// but its output and is graph-capture safe as is.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <climits>
#include <optional>
#include <string>

#include "bindings.h"
#include "kernels.h"

namespace eet {
namespace bindings {

// x [m, K] @ weight [K, N] (+ bias [N]), then 'none' or 'tanh_staged' (HF gelu_new with torch's roundings).
at::Tensor small_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        c10::string_view activation) {
  const char* op = "small_linear";
  check_cuda(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dtype = to_dtype(x, op);
  check_same_device(weight, x, op, "weight", "x");
  TORCH_CHECK(activation == "none" || activation == "tanh_staged", msg("eet::small_linear: activation must be 'none' or 'tanh_staged', got '", std::string(activation), "'"));
  TORCH_CHECK(x.dim() == 2, msg("eet::small_linear: x must be 2-D [rows, in_features], got shape ", x.sizes()));
  TORCH_CHECK(weight.dim() == 2, msg("eet::small_linear: weight must be 2-D [in_features, out_features] (Conv1D layout), got shape ", weight.sizes()));
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(1);
  TORCH_CHECK(m <= kSmallLinearMaxRows, msg("eet::small_linear: x has ", m, " rows, at most ", kSmallLinearMaxRows, " are supported (decode-step batches); use torch.addmm for more"));
  TORCH_CHECK(weight.size(0) == k, msg("eet::small_linear: weight shape ", weight.sizes(), " does not match x's ", k, " input features (weight is [in_features, out_features])"));
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), msg("eet::small_linear: weight dtype ", weight.scalar_type(), " differs from x dtype ", x.scalar_type()));
  TORCH_CHECK(x.stride(1) == 1 || k <= 1, msg("eet::small_linear: x must be contiguous in its last dim, got strides ", x.strides()));
  TORCH_CHECK(weight.stride(1) == 1 || n <= 1, msg("eet::small_linear: weight must be contiguous in its last dim, got strides ", weight.strides()));
  at::Tensor bias_c;
  if (bias) {
    check_same_device(*bias, x, op, "bias", "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, msg("eet::small_linear: bias must have shape [", n, "], got ", bias->sizes()));
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), msg("eet::small_linear: bias dtype ", bias->scalar_type(), " differs from x dtype ", x.scalar_type()));
    bias_c = bias->contiguous();
  }
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const SmallLinearPlan plan = small_linear_plan(dtype, m, n, k, num_sms);
  TORCH_CHECK(plan.tiles <= INT_MAX, msg("eet::small_linear: out_features ", n, " is too large (grid limit)"));
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SmallLinearParams p{};
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = bias ? bias_c.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.m = m;
  p.n = n;
  p.k = k;
  p.ldx = x.stride(0);
  p.ldw = weight.stride(0);
  p.act = activation == "tanh_staged" ? LinearActivation::kGeluTanhStaged : LinearActivation::kNone;
  check_launch(eet::small_linear(dtype, p, plan, stream), op);
  return out;
}

}  // namespace bindings
}  // namespace eet
