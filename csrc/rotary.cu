// Rotary position embedding of queries and keys in one launch (eet::rotary in kernels.h), HF's
// apply_rotary_pos_emb as Llama, Mistral, Qwen2 (rot == head_dim) and GPT-NeoX (partial: rot < head_dim) write it:
//   out[j] = x[j] * cos[j] + rotate_half(x)[j] * sin[j]   for j < rot,
//   out[j] = x[j]                                          for rot <= j < head_dim,
//   rotate_half(x)[j] = -x[j + rot/2] for j < rot/2, x[j - rot/2] otherwise.
// HF evaluates this with separate torch kernels in the storage dtype: each product is rounded to T, then the sum.
// The kernel rounds at the same points, so fp16/bf16 results equal HF's bit for bit; in fp32 __fmul_rn and
// __fadd_rn stop nvcc from contracting the products and the sum into an FMA (one rounding fewer: a different
// answer from torch's).
//
// Grid-stride loop over every output element of q and k (thread-block folding: any batch, heads, length, head_dim).
// Each element reads its partner x[j +- rot/2] itself: both sit in the same 128-byte line for head_dim <= 64 fp16
// and in L1 otherwise; the op moves a few MB at most per call.
#include <algorithm>

#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) rotary_kernel(RotaryArgs a) {
  const int64_t heads = a.heads_q + a.heads_k;
  const int64_t total = a.batch * a.seq * heads * a.head_dim;
  const int64_t half = a.rot / 2;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = t % a.head_dim;
    int64_t rest = t / a.head_dim;
    const int64_t s = rest % a.seq;
    rest /= a.seq;
    const int64_t h = rest % heads;
    const int64_t b = rest / heads;
    const bool is_q = h < a.heads_q;
    const int64_t hh = is_q ? h : h - a.heads_q;
    const int64_t* in_stride = is_q ? a.q_stride : a.k_stride;
    const int64_t* out_stride = is_q ? a.q_out_stride : a.k_out_stride;
    const T* x = static_cast<const T*>(is_q ? a.q : a.k) + b * in_stride[0] + hh * in_stride[1] + s * in_stride[2];
    T* out = static_cast<T*>(is_q ? a.q_out : a.k_out) + b * out_stride[0] + hh * out_stride[1] + s * out_stride[2];
    if (j >= a.rot) {
      out[j] = x[j];
      continue;
    }
    const int64_t table = b * a.cs_stride[0] + s * a.cs_stride[1] + j;
    const float c = to_float(static_cast<const T*>(a.cos)[table]);
    const float sn = to_float(static_cast<const T*>(a.sin)[table]);
    const float xj = to_float(x[j]);
    const float partner = j < half ? -to_float(x[j + half]) : to_float(x[j - half]);
    const float first = round_to<T>(__fmul_rn(xj, c));
    const float second = round_to<T>(__fmul_rn(partner, sn));
    out[j] = from_float<T>(__fadd_rn(first, second));
  }
}

}  // namespace

cudaError_t rotary(DType dtype, const RotaryArgs& args, cudaStream_t stream) {
  if (args.batch < 0 || args.seq < 0 || args.heads_q < 0 || args.heads_k < 0 || args.head_dim <= 0 ||
      args.rot <= 0 || args.rot > args.head_dim || args.rot % 2 != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = args.batch * args.seq * (args.heads_q + args.heads_k) * args.head_dim;
  if (total == 0) return cudaSuccess;
  // Enough blocks to fill the GPU several times over; the grid-stride loop takes the rest.
  const int64_t blocks = std::min<int64_t>(ceil_div(total, kThreads), 132 * 16);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rotary_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace eet
