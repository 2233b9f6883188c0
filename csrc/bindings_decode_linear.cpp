// CUDA entry points of eet::decode_linear and eet::decode_qkv_rope (decode_linear.cu) and eet::qkv_rope_append
// (qkv_rope_append.cu): the decode step's linear layers over nn.Linear weights [out, in], with the RMSNorm / LayerNorm
// prologue and the residual / activation / rotary + KV write epilogues. Argument checks and the device guard
// (bindings.h). The Python wrappers (eet_hf/ops/decode.py) send only what the kernel takes (fp16/bf16, 1-16 rows,
// aligned rows, a (norm, epilogue) pair with a kernel); anything else reaching here is a clear error.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <optional>
#include <string>

#include "bindings.h"
#include "decode_linear.h"
#include "qkv_rope_append.h"

namespace eet {
namespace bindings {
namespace {

bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// A norm parameter vector ([in_features], contiguous, 16-byte aligned, x's dtype and device).
void check_norm_vector(const char* op, const char* name, const at::Tensor& v, const at::Tensor& x) {
  const int64_t k = x.size(1);
  check_same_device(v, x, op, name, "x");
  TORCH_CHECK(v.dim() == 1 && v.size(0) == k && v.stride(0) == 1 && is_aligned(v.data_ptr(), 16),
              msg("eet::", op, ": ", name, " must be a contiguous, 16-byte aligned [", k, "], got ", v.sizes()));
  TORCH_CHECK(v.scalar_type() == x.scalar_type(), msg("eet::", op, ": ", name, " dtype ", v.scalar_type(), " differs from x dtype ", x.scalar_type()));
}

// The checks both ops share; fills x / weight / bias / norm fields of p. norm names the kind of norm_weight:
// 'rms' (HF Llama's RMSNorm) or 'layer' (LayerNorm, with norm_bias or without); no norm_weight: no norm.
void fill_common(const char* op, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                 c10::string_view norm, double eps, int64_t warps_per_tile, DecodeLinearParams& p) {
  check_same_device(weight, x, op, "weight", "x");
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              msg("eet::", op, ": x must be float16 or bfloat16 (tensor-core kernel), got ", x.scalar_type()));
  TORCH_CHECK(x.dim() == 2, msg("eet::", op, ": x must be 2-D [rows, in_features], got shape ", x.sizes()));
  TORCH_CHECK(weight.dim() == 2, msg("eet::", op, ": weight must be 2-D [out_features, in_features], got shape ", weight.sizes()));
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(m >= 1 && m <= kDecodeLinearMaxRows, msg("eet::", op, ": x has ", m, " rows; 1 to ", kDecodeLinearMaxRows, " are supported (decode steps)"));
  TORCH_CHECK(weight.size(1) == k, msg("eet::", op, ": weight shape ", weight.sizes(), " does not match x's ", k, " input features"));
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), msg("eet::", op, ": weight dtype ", weight.scalar_type(), " differs from x dtype ", x.scalar_type()));
  // out_features may be anything (a partial last tile); the paired epilogues check their own row layouts below.
  TORCH_CHECK(k % 8 == 0, msg("eet::", op, ": in_features must be a multiple of 8, got ", weight.sizes()));
  TORCH_CHECK(x.stride(1) == 1 && x.stride(0) % 8 == 0 && is_aligned(x.data_ptr(), 16),
              msg("eet::", op, ": x rows must be contiguous and 16-byte aligned, got strides ", x.strides()));
  TORCH_CHECK(weight.stride(1) == 1 && weight.stride(0) % 8 == 0 && is_aligned(weight.data_ptr(), 16),
              msg("eet::", op, ": weight rows must be contiguous and 16-byte aligned, got strides ", weight.strides()));
  if (bias) {
    check_same_device(*bias, x, op, "bias", "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->stride(0) == 1,
                msg("eet::", op, ": bias must be a contiguous [", weight.size(0), "], got ", bias->sizes()));
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), msg("eet::", op, ": bias dtype ", bias->scalar_type(), " differs from x dtype ", x.scalar_type()));
  }
  const std::string kind(norm);
  TORCH_CHECK(kind == "rms" || kind == "layer", msg("eet::", op, ": norm must be 'rms' or 'layer', got '", kind, "'"));
  TORCH_CHECK(!norm_bias || (norm_weight && kind == "layer"), msg("eet::", op, ": norm_bias goes with a norm_weight and norm 'layer'"));
  if (norm_weight) check_norm_vector(op, "norm_weight", *norm_weight, x);
  if (norm_bias) check_norm_vector(op, "norm_bias", *norm_bias, x);
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.norm_weight = norm_weight ? norm_weight->data_ptr() : nullptr;
  p.norm_bias = norm_bias ? norm_bias->data_ptr() : nullptr;
  p.norm = !norm_weight ? DecodeNorm::kNone : kind == "layer" ? DecodeNorm::kLayer : DecodeNorm::kRms;
  p.m = m;
  // The kernel indexes W rows and tiles with 32-bit integers (csrc/decode_linear_tile.cuh, tile_row).
  TORCH_CHECK(weight.size(0) < (int64_t{1} << 31) - 16,
              msg("eet::", op, ": weight has ", weight.size(0), " rows; fewer than 2^31 are supported"));
  p.rows = weight.size(0);
  p.k = k;
  p.ldx = x.stride(0);
  p.ldw = weight.stride(0);
  p.eps = static_cast<float>(eps);
  p.q_scale = 1.0f;
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  p.num_sms = props->multiProcessorCount;
  p.smem_per_block = static_cast<int64_t>(props->sharedMemPerBlockOptin);
  p.smem_per_sm = static_cast<int64_t>(props->sharedMemPerMultiprocessor);
  if (norm_weight) {
    const int64_t need = decode_linear_norm_min_smem(m, k);
    TORCH_CHECK(need <= p.smem_per_block, msg("eet::", op, ": the norm's ", m, " normalized rows of ", k, " columns need ", need,
                                              " bytes of shared memory; this device has ", p.smem_per_block, " per block"));
  }
  TORCH_CHECK(warps_per_tile == 0 || warps_per_tile == 8 || warps_per_tile == 16,
              msg("eet::", op, ": warps_per_tile must be 0 (the kernel's choice), 8 or 16, got ", warps_per_tile));
  p.warps_per_tile = static_cast<int>(warps_per_tile);
}

const char* norm_name(DecodeNorm norm) {
  switch (norm) {
    case DecodeNorm::kNone: return "none";
    case DecodeNorm::kRms: return "rms";
    case DecodeNorm::kLayer: return "layer";
    default: return "unknown";
  }
}

void check_has_kernel(const char* op, const DecodeLinearParams& p, const std::string& epilogue) {
  TORCH_CHECK(decode_linear_has_kernel(p.norm, p.epilogue),
              msg("eet::", op, ": no kernel is built for norm '", norm_name(p.norm), "' with epilogue '", epilogue,
                  "' (only the pairs the fused decoder step runs); eet_hf.ops.", op, " runs its reference for it"));
}

}  // namespace

// epilogue(norm(x) @ weight^T + bias): 'none', 'residual' (+ residual [rows, out]), 'relu', 'gelu_new', 'silu_mul' /
// 'gelu_tanh_mul' (weight packed [gate; up], out [rows, out / 2]).
at::Tensor decode_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& norm_weight, double eps,
                         const std::optional<at::Tensor>& residual, c10::string_view epilogue,
                         const std::optional<at::Tensor>& norm_bias, c10::string_view norm, int64_t warps_per_tile) {
  const char* op = "decode_linear";
  check_cuda(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  DecodeLinearParams p{};
  fill_common(op, x, weight, bias, norm_weight, norm_bias, norm, eps, warps_per_tile, p);
  const std::string epi(epilogue);
  if (epi == "none") {
    p.epilogue = DecodeEpilogue::kStore;
  } else if (epi == "residual") {
    p.epilogue = DecodeEpilogue::kResidual;
  } else if (epi == "silu_mul") {
    p.epilogue = DecodeEpilogue::kSiluMul;
  } else if (epi == "gelu_tanh_mul") {
    p.epilogue = DecodeEpilogue::kGeluTanhMul;
  } else if (epi == "relu") {
    p.epilogue = DecodeEpilogue::kRelu;
  } else if (epi == "gelu_new") {
    p.epilogue = DecodeEpilogue::kGeluNew;
  } else {
    TORCH_CHECK(false, msg("eet::decode_linear: epilogue must be 'none', 'residual', 'silu_mul', 'gelu_tanh_mul', 'relu' or 'gelu_new', got '", epi, "'"));
  }
  check_has_kernel(op, p, epi);
  const bool gated = p.epilogue == DecodeEpilogue::kSiluMul || p.epilogue == DecodeEpilogue::kGeluTanhMul;
  TORCH_CHECK(!gated || p.rows % 16 == 0, msg("eet::decode_linear: a gated epilogue needs [gate; up] with a multiple of 8 rows each, got ", weight.sizes()));
  TORCH_CHECK((p.epilogue == DecodeEpilogue::kResidual) == residual.has_value(), msg("eet::decode_linear: residual is required by epilogue 'residual' and only by it"));
  const int64_t cols = decode_linear_out_cols(p);
  if (residual) {
    check_same_device(*residual, x, op, "residual", "x");
    TORCH_CHECK(residual->dim() == 2 && residual->size(0) == p.m && residual->size(1) == cols && residual->stride(1) == 1,
                msg("eet::decode_linear: residual must be [", p.m, ", ", cols, "] with a contiguous last dim, got ", residual->sizes()));
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), msg("eet::decode_linear: residual dtype ", residual->scalar_type(), " differs from x dtype ", x.scalar_type()));
    p.residual = residual->data_ptr();
    p.ld_res = residual->stride(0);
  }
  at::Tensor out = at::empty({p.m, cols}, x.options());
  p.out = out.data_ptr();
  check_launch(eet::decode_linear(to_dtype(x, op), p, at::cuda::getCurrentCUDAStream()), op);
  return out;
}

// Packed QKV projection of one decode token per sequence (x [batch, 1, hidden]): q returned [batch, heads_q, 1,
// head_dim] (rotated unless cos and sin are None, times q_scale), k (rotated) and v written into the caches at
// write_pos.
at::Tensor decode_qkv_rope(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& norm_weight, double eps,
                           const std::optional<at::Tensor>& cos_in, const std::optional<at::Tensor>& sin_in,
                           at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& write_pos, int64_t heads_q,
                           int64_t heads_kv, const std::optional<at::Tensor>& norm_bias, c10::string_view norm,
                           double q_scale, int64_t warps_per_tile) {
  const char* op = "decode_qkv_rope";
  check_cuda(x_in, op, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(1) == 1, msg("eet::decode_qkv_rope: the CUDA kernel takes one token per sequence, x [batch, 1, hidden]; got shape ", x_in.sizes()));
  TORCH_CHECK(cos_in.has_value() == sin_in.has_value(), msg("eet::decode_qkv_rope: cos and sin go together (both None: no rotary)"));
  const bool rotary = cos_in.has_value();
  TORCH_CHECK(!rotary || (cos_in->dim() == 3 && sin_in->dim() == 3 && cos_in->size(1) == 1 && sin_in->size(1) == 1), msg("eet::decode_qkv_rope: cos and sin must be [batch, 1, head_dim], got ", cos_in->sizes()));
  const at::Tensor x = x_in.select(1, 0);
  DecodeLinearParams p{};
  fill_common(op, x, weight, bias, norm_weight, norm_bias, norm, eps, warps_per_tile, p);
  p.epilogue = DecodeEpilogue::kRotaryKv;
  check_has_kernel(op, p, "rotary_kv");
  TORCH_CHECK(heads_q > 0 && heads_kv > 0 && heads_q % heads_kv == 0, msg("eet::decode_qkv_rope: heads_q (", heads_q, ") must be a positive multiple of heads_kv (", heads_kv, ")"));
  TORCH_CHECK(p.rows % (heads_q + 2 * heads_kv) == 0, msg("eet::decode_qkv_rope: weight rows ", p.rows, " are not (heads_q + 2 * heads_kv) heads"));
  const int64_t head_dim = p.rows / (heads_q + 2 * heads_kv);
  TORCH_CHECK(head_dim % 16 == 0, msg("eet::decode_qkv_rope: head_dim must be a multiple of 16, got ", head_dim));
  if (rotary) {
    const at::Tensor cos = cos_in->select(1, 0), sin = sin_in->select(1, 0);
    for (const auto* t : {&cos, &sin}) {
      check_same_device(*t, x, op, "cos/sin", "x");
      TORCH_CHECK(t->dim() == 2 && t->size(0) == p.m && t->size(1) == head_dim && t->stride(1) == 1 && t->stride(0) == cos.stride(0),
                  msg("eet::decode_qkv_rope: cos and sin must be [", p.m, ", ", head_dim, "] with the same strides, got ", t->sizes()));
      TORCH_CHECK(t->scalar_type() == x.scalar_type(), msg("eet::decode_qkv_rope: cos/sin dtype ", t->scalar_type(), " differs from x dtype ", x.scalar_type()));
    }
    p.cos = cos.data_ptr();
    p.sin = sin.data_ptr();
    p.ld_cs = cos.stride(0);
  }
  for (const auto* t : {&k_cache, &v_cache}) {
    check_same_device(*t, x, op, "cache", "x");
    TORCH_CHECK(t->dim() == 4 && t->size(0) == p.m && t->size(1) == heads_kv && t->size(3) == head_dim && t->stride(3) == 1,
                msg("eet::decode_qkv_rope: caches must be [", p.m, ", ", heads_kv, ", capacity, ", head_dim, "] with a contiguous last dim, got ", t->sizes()));
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), msg("eet::decode_qkv_rope: cache dtype ", t->scalar_type(), " differs from x dtype ", x.scalar_type()));
  }
  TORCH_CHECK(k_cache.size(2) == v_cache.size(2), msg("eet::decode_qkv_rope: k and v caches differ in capacity"));
  check_same_device(write_pos, x, op, "write_pos", "x");
  TORCH_CHECK(write_pos.scalar_type() == at::kInt && write_pos.dim() == 1 && write_pos.size(0) == p.m && write_pos.stride(0) == 1,
              msg("eet::decode_qkv_rope: write_pos must be a contiguous int32 [", p.m, "], got ", write_pos.scalar_type(), " ", write_pos.sizes()));
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  for (int d = 0; d < 3; ++d) {
    p.k_stride[d] = k_cache.stride(d);
    p.v_stride[d] = v_cache.stride(d);
  }
  p.cache_len = k_cache.size(2);
  p.write_pos = write_pos.data_ptr<int32_t>();
  p.q_scale = static_cast<float>(q_scale);
  p.heads_q = static_cast<int>(heads_q);
  p.heads_kv = static_cast<int>(heads_kv);
  p.head_dim = static_cast<int>(head_dim);
  // [batch, heads_q, 1, head_dim] contiguous is the kernel's [batch, heads_q * head_dim] rows.
  at::Tensor q = at::empty({p.m, heads_q, 1, head_dim}, x.options());
  p.out = q.data_ptr();
  check_launch(eet::decode_linear(to_dtype(x, op), p, at::cuda::getCurrentCUDAStream()), op);
  return q;
}

// [Per-head RMSNorm of q and k +] rotary (unless cos and sin are None) + KV write of a projected qkv [batch, seq,
// (heads_q + 2 heads_kv) * head_dim]: q returned [batch, heads_q, seq, head_dim] (times q_scale), k and v written into
// the caches at write_pos[b] + s.
at::Tensor qkv_rope_append(const at::Tensor& qkv, const std::optional<at::Tensor>& q_norm,
                           const std::optional<at::Tensor>& k_norm, double eps, const std::optional<at::Tensor>& cos,
                           const std::optional<at::Tensor>& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                           const at::Tensor& write_pos, int64_t heads_q, int64_t heads_kv, double q_scale) {
  const char* op = "qkv_rope_append";
  check_cuda(qkv, op, "qkv");
  const c10::cuda::CUDAGuard guard(qkv.device());
  const auto dtype = to_dtype(qkv, op);
  TORCH_CHECK(qkv.dim() == 3 && qkv.stride(2) == 1, msg("eet::qkv_rope_append: qkv must be [batch, seq, width] with a contiguous last dim, got ", qkv.sizes()));
  const int64_t batch = qkv.size(0), seq = qkv.size(1);
  TORCH_CHECK(heads_q > 0 && heads_kv > 0 && qkv.size(2) % (heads_q + 2 * heads_kv) == 0, msg("eet::qkv_rope_append: width ", qkv.size(2), " is not (heads_q + 2 * heads_kv) heads"));
  const int64_t head_dim = qkv.size(2) / (heads_q + 2 * heads_kv);
  TORCH_CHECK(head_dim % 2 == 0 && head_dim <= 256, msg("eet::qkv_rope_append: head_dim must be even and at most 256, got ", head_dim));
  TORCH_CHECK(qkv.is_contiguous(), msg("eet::qkv_rope_append: qkv must be contiguous, got strides ", qkv.strides()));
  TORCH_CHECK(q_norm.has_value() == k_norm.has_value(), msg("eet::qkv_rope_append: q_norm and k_norm go together"));
  if (q_norm) {
    for (const auto* w : {&*q_norm, &*k_norm}) {
      check_same_device(*w, qkv, op, "q_norm/k_norm", "qkv");
      TORCH_CHECK(w->dim() == 1 && w->size(0) == head_dim && w->stride(0) == 1 && w->scalar_type() == qkv.scalar_type(), msg("eet::qkv_rope_append: q_norm and k_norm must be contiguous [", head_dim, "] of qkv's dtype"));
    }
  }
  TORCH_CHECK(cos.has_value() == sin.has_value(), msg("eet::qkv_rope_append: cos and sin go together (both None: no rotary)"));
  if (cos) {
    for (const auto* t : {&*cos, &*sin}) {
      check_same_device(*t, qkv, op, "cos/sin", "qkv");
      TORCH_CHECK(t->dim() == 3 && t->size(0) == batch && t->size(1) == seq && t->size(2) == head_dim && t->stride(2) == 1 && t->stride(1) == head_dim && t->stride(0) == seq * head_dim && t->scalar_type() == qkv.scalar_type(),
                  msg("eet::qkv_rope_append: cos and sin must be contiguous [", batch, ", ", seq, ", ", head_dim, "] of qkv's dtype, got ", t->sizes()));
    }
  }
  for (const auto* t : {&k_cache, &v_cache}) {
    check_same_device(*t, qkv, op, "cache", "qkv");
    TORCH_CHECK(t->dim() == 4 && t->size(0) == batch && t->size(1) == heads_kv && t->size(3) == head_dim && t->stride(3) == 1 && t->scalar_type() == qkv.scalar_type(),
                msg("eet::qkv_rope_append: caches must be [", batch, ", ", heads_kv, ", capacity, ", head_dim, "] of qkv's dtype, got ", t->sizes()));
  }
  TORCH_CHECK(k_cache.size(2) == v_cache.size(2), msg("eet::qkv_rope_append: k and v caches differ in capacity"));
  check_same_device(write_pos, qkv, op, "write_pos", "qkv");
  TORCH_CHECK(write_pos.scalar_type() == at::kInt && write_pos.dim() == 1 && write_pos.size(0) == batch && write_pos.stride(0) == 1,
              msg("eet::qkv_rope_append: write_pos must be a contiguous int32 [", batch, "]"));
  at::Tensor q = at::empty({batch, heads_q, seq, head_dim}, qkv.options());
  QkvRopeAppendParams p{};
  p.qkv = qkv.data_ptr();
  p.q_norm = q_norm ? q_norm->data_ptr() : nullptr;
  p.k_norm = k_norm ? k_norm->data_ptr() : nullptr;
  p.cos = cos ? cos->data_ptr() : nullptr;
  p.sin = sin ? sin->data_ptr() : nullptr;
  p.q_out = q.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.write_pos = write_pos.data_ptr<int32_t>();
  p.ld_qkv = qkv.size(2);
  p.ld_cs = head_dim;
  p.batch = batch;
  p.seq = seq;
  p.cache_len = k_cache.size(2);
  for (int d = 0; d < 3; ++d) {
    p.k_stride[d] = k_cache.stride(d);
    p.v_stride[d] = v_cache.stride(d);
  }
  p.eps = static_cast<float>(eps);
  p.q_scale = static_cast<float>(q_scale);
  p.heads_q = static_cast<int>(heads_q);
  p.heads_kv = static_cast<int>(heads_kv);
  p.head_dim = static_cast<int>(head_dim);
  if (batch * seq == 0) return q;
  check_launch(eet::qkv_rope_append(dtype, p, at::cuda::getCurrentCUDAStream()), op);
  return q;
}

}  // namespace bindings
}  // namespace eet
