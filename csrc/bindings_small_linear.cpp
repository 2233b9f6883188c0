// CUDA entry point of eet::small_linear (small_linear.cu): the decode-step linear layer (x [m <= 8, K] @ W [K, N]
// + bias, optional fused gelu_new). Argument checks and the device guard (bindings.h); the output is a new
// contiguous [m, N] tensor, allocated before any scratch so the GPU tests' poisoned block lands on it.
//
// Scratch, and why it is safe under CUDA graph capture:
// - fp32 split-K partials come from torch's caching allocator, the same size on every call of a shape, so a
//   capture records a fixed block of the graph's private pool.
// - The split-K arrival counters must be zero before a launch, and a memset per call would cost a second kernel.
//   Each launch leaves them zero (the last block of a tile resets its counter), so one zeroed buffer per (device,
//   stream) is allocated once and reused by every later launch on that stream, eager or captured. It is allocated
//   outside torch's allocator (cudaMalloc, zeroed on a private stream, in relaxed capture mode), so the first call
//   may come during a capture, and never freed (256 KB per stream that ran a split launch).
//   Launches sharing a buffer must not overlap in time: true for launches on one stream, and for graphs as long as
//   a graph is not replayed on another stream concurrently with work on the stream it was captured on.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "bindings.h"
#include "kernels.h"

namespace eet {
namespace bindings {
namespace {

int* split_counters(int device, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, int*> buffers;
  const std::lock_guard<std::mutex> lock(mutex);
  int*& slot = buffers[{device, stream}];
  if (slot != nullptr) return slot;
  const size_t bytes = static_cast<size_t>(kSmallLinearCounters) * sizeof(int);
  // Relaxed mode lets this thread cudaMalloc and synchronize a private stream while `stream` is being captured;
  // none of this touches the captured stream.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaError_t err = cudaThreadExchangeStreamCaptureMode(&mode);
  int* buffer = nullptr;
  cudaStream_t side = nullptr;
  if (err == cudaSuccess) err = cudaMalloc(&buffer, bytes);
  if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaMemsetAsync(buffer, 0, bytes, side);
  if (err == cudaSuccess) err = cudaStreamSynchronize(side);
  if (side != nullptr) cudaStreamDestroy(side);
  if (err != cudaSuccess && buffer != nullptr) cudaFree(buffer);
  cudaThreadExchangeStreamCaptureMode(&mode);  // restores the caller's mode
  if (err != cudaSuccess) cudaGetLastError();  // clear the (non-sticky) error so later launches do not report it
  TORCH_CHECK(err == cudaSuccess, msg("eet::small_linear: allocating the split-K counters failed: ", cudaGetErrorString(err)));
  slot = buffer;
  return buffer;
}

}  // namespace

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
  TORCH_CHECK(plan.splits <= 65535, msg("eet::small_linear: in_features ", k, " is too large (split-K grid limit)"));
  TORCH_CHECK(plan.splits == 1 || plan.tiles <= kSmallLinearCounters, msg("eet::small_linear: out_features ", n, " is too large for split-K (at most ", kSmallLinearCounters, " column tiles)"));
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor workspace;
  if (plan.workspace_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes / sizeof(float))}, x.options().dtype(at::kFloat));
  }
  SmallLinearParams p{};
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = bias ? bias_c.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.workspace = plan.workspace_bytes > 0 ? workspace.data_ptr() : nullptr;
  p.counters = plan.splits > 1 ? split_counters(x.device().index(), stream) : nullptr;
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
