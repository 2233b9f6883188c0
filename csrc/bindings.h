// Shared by the bindings*.cpp files, the only files that include torch: the error-message builder, the argument
// checks every op entry uses, and the op entry points that bindings.cpp registers under the CUDA dispatch key.
//
// Every entry point checks its tensors are CUDA tensors on one device, then takes a device guard for that
// device before it allocates or launches: a model spread over several GPUs calls ops on cuda:1 while cuda:0
// is current, and allocations, device properties and at::cuda::getCurrentCUDAStream() follow the current
// device. The stream is taken after the guard, at the launch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "kernels.h"

namespace eet {
namespace bindings {

// Error messages are built here, without iostreams: on the H200 image (torch 2.11), streaming an integer
// through this extension's ostream (what TORCH_CHECK's variadic message does) segfaulted inside libstdc++'s
// number formatting, so every op error killed the process (cuda-gdb backtrace in the session notes).
// TORCH_CHECK with one std::string argument passes it through without a stream.
inline std::string msg_piece(const char* s) { return s; }
inline std::string msg_piece(const std::string& s) { return s; }
inline std::string msg_piece(int64_t v) { return std::to_string(v); }
inline std::string msg_piece(int v) { return std::to_string(v); }
inline std::string msg_piece(double v) { return std::to_string(v); }
inline std::string msg_piece(c10::ScalarType t) { return c10::toString(t); }
inline std::string msg_piece(const c10::Device& d) { return d.str(); }
inline std::string msg_piece(at::IntArrayRef dims) {
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

inline eet::DType to_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return eet::DType::kFloat32;
    case at::kHalf: return eet::DType::kFloat16;
    case at::kBFloat16: return eet::DType::kBFloat16;
    default:
      TORCH_CHECK(false, msg("eet::", op, ": dtype must be float32, float16 or bfloat16, got ", t.scalar_type()));
  }
}

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), msg("eet::", op, ": ", name, " must be a CUDA tensor, got ", t.device()));
}

// t is a CUDA tensor on the device of ref (the tensor whose device the op runs on).
inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                              const char* ref_name) {
  check_cuda(t, op, name);
  TORCH_CHECK(t.device() == ref.device(), msg("eet::", op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device()));
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, msg("eet::", op, ": kernel launch failed: ", cudaGetErrorString(err)));
}

// A [hidden] parameter vector matching x's last dim, dtype and device.
inline void check_vector(const at::Tensor& p, const at::Tensor& x, const char* op, const char* name) {
  check_same_device(p, x, op, name, "x");
  TORCH_CHECK(p.dim() == 1 && p.size(0) == x.size(-1), msg("eet::", op, ": ", name, " must have shape [", x.size(-1), "], got ", p.sizes()));
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), msg("eet::", op, ": ", name, " dtype ", p.scalar_type(), " differs from x dtype ", x.scalar_type()));
}

// ------------------------------------------------------------------------------------------------
// Op entry points (schemas in eet_hf/ops/_library.py).

// bindings_norm_gelu.cpp
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      double eps);
std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                  double eps);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor bias_gelu(const at::Tensor& x, const std::optional<at::Tensor>& bias, c10::string_view approximate);

// bindings_attention.cpp
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_start,
                     const at::Tensor& kv_end, const at::Tensor& q_offset, bool causal, double scale);
at::Tensor attention_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                            int64_t max_seqlen, bool causal, double scale);

// bindings_embedding_kv.cpp
at::Tensor embedding(const at::Tensor& input_ids, const at::Tensor& position_ids, const at::Tensor& wte,
                     const std::optional<at::Tensor>& wpe);
// Row-wise argmax of [rows, cols] logits, int64 [rows] (greedy token choice).
at::Tensor argmax_rows(const at::Tensor& x);
at::Tensor kv_append(const at::Tensor& qkv, const std::optional<at::Tensor>& bias, at::Tensor& k_cache,
                     at::Tensor& v_cache, const at::Tensor& write_pos, int64_t heads_q, int64_t heads_kv);

// bindings_padding.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> padding_runs(const at::Tensor& mask);
std::tuple<at::Tensor, at::Tensor> in_place_packing(const at::Tensor& start, const at::Tensor& end, int64_t seq_len);

// bindings_rotary.cpp
std::tuple<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                          const at::Tensor& sin);

// bindings_small_linear.cpp
at::Tensor small_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        c10::string_view activation);

// bindings_decode_linear.cpp
at::Tensor decode_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& norm_weight, double eps,
                         const std::optional<at::Tensor>& residual, c10::string_view epilogue,
                         const std::optional<at::Tensor>& norm_bias, c10::string_view norm, int64_t warps_per_tile);
at::Tensor decode_qkv_rope(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& norm_weight, double eps,
                           const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                           at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& write_pos, int64_t heads_q,
                           int64_t heads_kv, const std::optional<at::Tensor>& norm_bias, c10::string_view norm,
                           double q_scale, int64_t warps_per_tile);
at::Tensor qkv_rope_append(const at::Tensor& qkv, const std::optional<at::Tensor>& q_norm,
                           const std::optional<at::Tensor>& k_norm, double eps, const std::optional<at::Tensor>& cos,
                           const std::optional<at::Tensor>& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                           const at::Tensor& write_pos, int64_t heads_q, int64_t heads_kv, double q_scale);

}  // namespace bindings
}  // namespace eet
