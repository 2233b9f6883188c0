// CUDA entry point of eet::rotary (rotary.cu): HF's apply_rotary_pos_emb on q and k in one launch. Argument
// checks and the device guard (bindings.h); outputs are contiguous [batch, heads, seq, head_dim], as the
// reference's (and the fake's).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <tuple>

#include "bindings.h"
#include "kernels.h"

namespace eet {
namespace bindings {
namespace {

void check_heads(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, msg("eet::rotary: ", name, " must be 4-D [batch, heads, seq, head_dim], got shape ", t.sizes()));
  TORCH_CHECK(t.stride(3) == 1, msg("eet::rotary: ", name, " must be contiguous in its last dim"));
}

void copy_strides(const at::Tensor& t, int64_t (&out)[3]) {
  for (int d = 0; d < 3; ++d) out[d] = t.stride(d);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos_in,
                                          const at::Tensor& sin_in) {
  const char* op = "rotary";
  check_cuda(q, op, "q");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto dtype = to_dtype(q, op);
  check_same_device(k, q, op, "k", "q");
  check_same_device(cos_in, q, op, "cos", "q");
  check_same_device(sin_in, q, op, "sin", "q");
  check_heads(q, "q");
  check_heads(k, "k");
  for (const auto* t : {&k, &cos_in, &sin_in}) {
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), msg("eet::rotary: every input must have q's dtype ", q.scalar_type(), ", got ", t->scalar_type()));
  }
  const int64_t batch = q.size(0), seq = q.size(2), head_dim = q.size(3);
  TORCH_CHECK(k.size(0) == batch && k.size(2) == seq && k.size(3) == head_dim, msg("eet::rotary: k shape ", k.sizes(), " does not match q shape ", q.sizes(), " in batch, seq or head_dim"));
  TORCH_CHECK(cos_in.dim() == 3 && sin_in.sizes() == cos_in.sizes(), msg("eet::rotary: cos and sin must both be [batch or 1, seq, rot], got ", cos_in.sizes(), " and ", sin_in.sizes()));
  const int64_t rot = cos_in.size(2);
  TORCH_CHECK((cos_in.size(0) == batch || cos_in.size(0) == 1) && cos_in.size(1) == seq, msg("eet::rotary: cos shape ", cos_in.sizes(), " does not match batch ", batch, " and seq ", seq));
  TORCH_CHECK(rot > 0 && rot % 2 == 0 && rot <= head_dim, msg("eet::rotary: the rotary dim (cos.size(-1) = ", rot, ") must be even and at most head_dim ", head_dim));
  // Same shape and both contiguous: one set of strides serves both; a batch of 1 is broadcast (stride 0).
  const at::Tensor cos = cos_in.contiguous();
  const at::Tensor sin = sin_in.contiguous();
  at::Tensor q_out = at::empty(q.sizes(), q.options());
  at::Tensor k_out = at::empty(k.sizes(), k.options());
  if (q.numel() + k.numel() == 0) return {q_out, k_out};
  RotaryArgs a{};
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.cos = cos.data_ptr();
  a.sin = sin.data_ptr();
  a.q_out = q_out.data_ptr();
  a.k_out = k_out.data_ptr();
  copy_strides(q, a.q_stride);
  copy_strides(k, a.k_stride);
  copy_strides(q_out, a.q_out_stride);
  copy_strides(k_out, a.k_out_stride);
  a.cs_stride[0] = cos.size(0) == 1 ? 0 : cos.stride(0);
  a.cs_stride[1] = cos.stride(1);
  a.batch = batch;
  a.seq = seq;
  a.heads_q = q.size(1);
  a.heads_k = k.size(1);
  a.head_dim = head_dim;
  a.rot = rot;
  check_launch(eet::rotary(dtype, a, at::cuda::getCurrentCUDAStream()), op);
  return {q_out, k_out};
}

}  // namespace bindings
}  // namespace eet
