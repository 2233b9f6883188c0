// CUDA entry points of the attention ops: attention (padded batches, bounds per sequence) and attention_varlen
// (packed sequences), kernels in attention*.cu; head dims without a kernel go through torch's SDPA with a
// materialized mask. Argument checks and the device guard (bindings.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "bindings.h"
#include "kernels.h"

namespace eet {
namespace bindings {
namespace {

void check_bounds(const at::Tensor& t, const at::Tensor& q, int64_t batch, const char* name) {
  check_same_device(t, q, "attention", name, "q");
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
  // Keys outside [kv_start, kv_end) are never read by the kernels (a KV cache's unused slots hold anything, NaN and
  // inf included); SDPA multiplies masked scores and values by zero, and 0 * NaN is NaN, so they are zeroed first
  // (as reference.attention does). Without this, a decode step over a partly filled cache returned NaN.
  const at::Tensor in_bounds = ((j >= kv_start.view({-1, 1, 1})) & (j < kv_end.view({-1, 1, 1}))).view({-1, 1, kv_len, 1});
  const int64_t groups = q.size(1) / k.size(1);
  at::Tensor kk = k.masked_fill(in_bounds.logical_not(), 0);
  at::Tensor vv = v.masked_fill(in_bounds.logical_not(), 0);
  if (groups > 1) {
    kk = kk.repeat_interleave(groups, 1);
    vv = vv.repeat_interleave(groups, 1);
  }
  at::Tensor out = at::scaled_dot_product_attention(q, kk, vv, visible.unsqueeze(1), 0.0, false, scale);
  const at::Tensor any_visible = visible.any(-1).view({q.size(0), 1, q_len, 1});
  out = at::where(any_visible, out, at::zeros({}, out.options()));
  return out.transpose(1, 2).contiguous();
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

}  // namespace

// Attention with in-kernel masks from per-sequence bounds (see kernels.h for the visibility rule).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_start,
                     const at::Tensor& kv_end, const at::Tensor& q_offset, bool causal, double scale) {
  const char* op = "attention";
  check_cuda(q, op, "q");
  check_same_device(k, q, op, "k", "q");
  check_same_device(v, q, op, "v", "q");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto dtype = to_dtype(q, op);
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, msg("eet::attention: q, k, v must be 4-D [batch, heads, seq, head_dim], got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes()));
  TORCH_CHECK(k.sizes() == v.sizes(), msg("eet::attention: k and v shapes differ: ", k.sizes(), " vs ", v.sizes()));
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), msg("eet::attention: q, k, v dtypes differ: ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type()));
  const int64_t batch = q.size(0), heads_q = q.size(1), q_len = q.size(2), head_dim = q.size(3);
  const int64_t heads_kv = k.size(1), kv_len = k.size(2);
  TORCH_CHECK(k.size(0) == batch && k.size(3) == head_dim, msg("eet::attention: k shape ", k.sizes(), " does not match q shape ", q.sizes()));
  TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, msg("eet::attention: query heads (", heads_q, ") must be a multiple of key/value heads (", heads_kv, ")"));
  check_bounds(kv_start, q, batch, "kv_start");
  check_bounds(kv_end, q, batch, "kv_end");
  check_bounds(q_offset, q, batch, "q_offset");
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

// Attention over packed sequences (no padding stored): q [tokens, heads_q, head_dim], k/v [tokens, heads_kv,
// head_dim], sequence b = rows [cu_seqlens[b], cu_seqlens[b+1]). Any strides but a contiguous last dim, so
// q, k, v may be views into one packed QKV GEMM output. cu_seqlens is trusted (read on the device only):
// cu_seqlens[0] == 0, non-decreasing, cu_seqlens[-1] == tokens, every length <= max_seqlen.
at::Tensor attention_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                            int64_t max_seqlen, bool causal, double scale) {
  const char* op = "attention_varlen";
  check_cuda(q, op, "q");
  check_same_device(k, q, op, "k", "q");
  check_same_device(v, q, op, "v", "q");
  check_same_device(cu_seqlens, q, op, "cu_seqlens", "q");
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

}  // namespace bindings
}  // namespace eet
