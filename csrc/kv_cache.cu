// Split a fused QKV projection into q and the KV cache (eet::kv_append in kernels.h), with the bias add:
//     x = qkv[b, s] + bias  (fp32, rounded once to the storage dtype)
//     q_out[b, h, s]                      = x[q block, head h]
//     k_cache[b, h, write_pos[b] + s]     = x[k block, head h]   (slot in [0, cache_len) only)
//     v_cache[b, h, write_pos[b] + s]     = x[v block, head h]   (likewise)
// The q|k|v blocks are each heads x head_dim, head-major: GPT-2's c_attn output split into three and
// viewed [B, S, H, D]. One pass replaces HF's bias add, split, three transposes and the cache's cat.
//
// write_pos is read on the device, so a captured CUDA graph appends at whatever position the caller
// wrote into it before the replay. A slot outside the cache is skipped (no write, no out-of-bounds
// access); the caller checks capacity on the host where it can afford to.
//
// Grid: blockIdx.x picks a chunk of the qkv row (thread-block folding: any width), blockIdx.y a token,
// striding over more tokens than gridDim.y holds. A thread owns one vector of VEC elements, which never
// straddles two heads (the vector path needs head_dim % VEC == 0).
#include <algorithm>
#include <climits>

#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxGridY = 65535;  // hardware limit of gridDim.y

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) kv_append_kernel(KvAppendParams p, int64_t tokens) {
  const T* __restrict__ qkv = static_cast<const T*>(p.qkv);    // [batch, seq, width], strided rows
  const T* __restrict__ bias = static_cast<const T*>(p.bias);  // [width] or nullptr
  T* __restrict__ q_out = static_cast<T*>(p.q_out);            // [batch, heads_q, seq, head_dim]
  const int64_t width = static_cast<int64_t>(p.heads_q + 2 * p.heads_kv) * p.head_dim;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  pdl_trigger();
  // qkv and write_pos come from earlier kernels, and the cache slots written here may still be read by an earlier
  // kernel until it completes (PDL contract, common.cuh). Every thread waits, even one with no column: a grid that
  // completes implies its predecessor did, which later kernels' ordering relies on.
  pdl_wait();
  if (col >= width) return;  // no barriers below
  const int head = static_cast<int>(col / p.head_dim);  // 0 .. heads_q + 2 * heads_kv - 1
  const int64_t d = col - static_cast<int64_t>(head) * p.head_dim;
  float b[VEC];
  if (bias != nullptr) {
    load_float<VEC>(bias + col, b);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) b[j] = 0.0f;
  }
  const bool is_q = head < p.heads_q;
  const bool is_k = !is_q && head < p.heads_q + p.heads_kv;
  const int kv_head = is_q ? 0 : (is_k ? head - p.heads_q : head - p.heads_q - p.heads_kv);
  T* cache = static_cast<T*>(is_k ? p.k_cache : p.v_cache);  // [batch, heads_kv, cache_len, head_dim]
  const int64_t stride_b = is_k ? p.k_stride_b : p.v_stride_b;
  const int64_t stride_h = is_k ? p.k_stride_h : p.v_stride_h;
  const int64_t stride_l = is_k ? p.k_stride_l : p.v_stride_l;

  for (int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    const int64_t bi = t / p.seq, s = t - bi * p.seq;
    T* dst;
    if (is_q) {
      dst = q_out + ((bi * p.heads_q + head) * p.seq + s) * p.head_dim + d;
    } else {
      const int64_t slot = static_cast<int64_t>(p.write_pos[bi]) + s;  // int64: no overflow near INT32_MAX
      if (slot < 0 || slot >= p.cache_len) continue;
      dst = cache + bi * stride_b + kv_head * stride_h + slot * stride_l + d;
    }
    float v[VEC];
    load_float<VEC>(qkv + bi * p.qkv_stride_b + s * p.qkv_stride_s + col, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] += b[j];
    store_float<VEC>(dst, v);
  }
}

template <typename T, int VEC>
cudaError_t launch_kv_append(const KvAppendParams& p, cudaStream_t stream) {
  const int64_t width = static_cast<int64_t>(p.heads_q + 2 * p.heads_kv) * p.head_dim;
  const int64_t num_vecs = width / VEC;
  // Equal chunks of at most kMaxThreads vectors, so the last block of a row is not mostly idle.
  const int64_t chunks = ceil_div(num_vecs, kMaxThreads);
  const int64_t threads = round_up(ceil_div(num_vecs, chunks), 32);
  if (chunks > INT_MAX) return cudaErrorInvalidValue;
  const int64_t tokens = p.batch * p.seq;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min(tokens, kMaxGridY)));
  return launch_pdl(kv_append_kernel<T, VEC>, grid, dim3(static_cast<unsigned>(threads)), 0, stream, 1, p, tokens);
}

// May every access use VEC-element vectors? Each vector starts at base + (row strides) + a multiple of
// VEC within a head, so aligned bases, strides that are multiples of VEC and head_dim % VEC == 0 suffice.
template <typename T, int VEC>
bool can_vectorize(const KvAppendParams& p) {
  constexpr size_t kBytes = sizeof(T) * VEC;
  const int64_t strides[] = {p.qkv_stride_b, p.qkv_stride_s, p.k_stride_b, p.k_stride_h,
                             p.k_stride_l,   p.v_stride_b,   p.v_stride_h, p.v_stride_l};
  for (const int64_t s : strides) {
    if (s % VEC != 0) return false;
  }
  return p.head_dim % VEC == 0 && is_aligned(p.qkv, kBytes) && is_aligned(p.bias, kBytes) &&
         is_aligned(p.k_cache, kBytes) && is_aligned(p.v_cache, kBytes) && is_aligned(p.q_out, kBytes);
}

}  // namespace

cudaError_t kv_append(DType dtype, const KvAppendParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.seq < 0 || p.cache_len < 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.head_dim <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0 || p.seq == 0) return cudaSuccess;
  if (p.qkv == nullptr || p.k_cache == nullptr || p.v_cache == nullptr || p.write_pos == nullptr ||
      p.q_out == nullptr) {
    return cudaErrorInvalidValue;
  }
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kVec = kVec16<T>;
    return can_vectorize<T, kVec>(p) ? launch_kv_append<T, kVec>(p, stream) : launch_kv_append<T, 1>(p, stream);
  });
}

}  // namespace eet
