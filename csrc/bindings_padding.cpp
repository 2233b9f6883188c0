// CUDA entry points of the attention-mask bookkeeping ops (padding_runs.cu): padding_runs (each row's run of real
// keys and whether the mask is left / right padding) and in_place_packing (the encoder's in-place packing plan).
// Argument checks and the device guard (bindings.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <tuple>

#include "bindings.h"
#include "kernels.h"

namespace eet {
namespace bindings {

// (start int32 [rows], end int32 [rows], flags int32 [3]) of a 2-D mask (nonzero: a real key).
std::tuple<at::Tensor, at::Tensor, at::Tensor> padding_runs(const at::Tensor& mask_in) {
  const char* op = "padding_runs";
  check_cuda(mask_in, op, "mask");
  const c10::cuda::CUDAGuard guard(mask_in.device());
  TORCH_CHECK(mask_in.dim() == 2, msg("eet::padding_runs: mask must be 2-D [batch, keys], got shape ", mask_in.sizes()));
  TORCH_CHECK(mask_in.size(1) <= INT32_MAX, msg("eet::padding_runs: masks of 2^31 keys or more are not supported, got ", mask_in.size(1)));
  at::Tensor mask = mask_in;
  if (at::isFloatingType(mask.scalar_type()) || at::isComplexType(mask.scalar_type())) {
    mask = mask.ne(0);  // a float mask (1.0 / 0.0): nonzero by value, not by bits (-0.0 is padding)
  }
  const int64_t bytes = mask.element_size();
  TORCH_CHECK(bytes == 1 || bytes == 4 || bytes == 8, msg("eet::padding_runs: mask dtype must be bool or an integer type of 1, 4 or 8 bytes, got ", mask.scalar_type()));
  const int64_t rows = mask.size(0), cols = mask.size(1);
  if (mask.stride(1) != 1 || (rows > 1 && mask.stride(0) < cols)) mask = mask.contiguous();  // e.g. an expand
  at::Tensor out = at::empty({2 * rows + 3}, mask.options().dtype(at::kInt));
  int32_t* base = out.data_ptr<int32_t>();
  check_launch(eet::padding_runs(mask.data_ptr(), static_cast<int>(bytes), rows, cols, rows > 1 ? mask.stride(0) : cols,
                                 base, base + rows, base + 2 * rows, at::cuda::getCurrentCUDAStream()),
               op);
  return {out.narrow(0, 0, rows), out.narrow(0, rows, rows), out.narrow(0, 2 * rows, 3)};
}

// (cu_seqlens int32 [3 * batch + 1], real bool [batch, seq]) of the in-place packing of runs [start, end).
std::tuple<at::Tensor, at::Tensor> in_place_packing(const at::Tensor& start_in, const at::Tensor& end_in,
                                                    int64_t seq_len) {
  const char* op = "in_place_packing";
  check_cuda(start_in, op, "start");
  const c10::cuda::CUDAGuard guard(start_in.device());
  check_same_device(end_in, start_in, op, "end", "start");
  TORCH_CHECK(start_in.dim() == 1 && end_in.sizes() == start_in.sizes(), msg("eet::in_place_packing: start and end must be 1-D of one length, got shapes ", start_in.sizes(), " and ", end_in.sizes()));
  const int64_t batch = start_in.size(0);
  TORCH_CHECK(seq_len >= 0 && batch * seq_len <= INT32_MAX, msg("eet::in_place_packing: batch * seq_len must be in [0, 2^31), got ", batch, " * ", seq_len));
  const at::Tensor start = start_in.to(at::kInt).contiguous(), end = end_in.to(at::kInt).contiguous();
  at::Tensor cu_seqlens = at::empty({3 * batch + 1}, start.options());
  at::Tensor real = at::empty({batch, seq_len}, start.options().dtype(at::kBool));
  check_launch(eet::in_place_packing(start.data_ptr<int32_t>(), end.data_ptr<int32_t>(), batch, seq_len,
                                     cu_seqlens.data_ptr<int32_t>(), real.data_ptr<bool>(),
                                     at::cuda::getCurrentCUDAStream()),
               op);
  return {cu_seqlens, real};
}

}  // namespace bindings
}  // namespace eet
