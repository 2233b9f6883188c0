// Token + position embedding gather (eet::embedding in kernels.h): out[b, s] = wte[id] + wpe[pos], the sum
// in fp32 and rounded once to the storage dtype. That is what HF's `inputs_embeds + position_embeds`
// gives in fp16 / bf16 (two storage-dtype values added by torch in fp32, one rounding).
//
// An id outside [0, vocab) or a position outside [0, positions) writes a row of NaN instead of reading
// out of bounds: loud in any downstream check, and never an illegal address. (HF raises an index error
// on the host for these; a kernel cannot without a sync, which CUDA graph capture forbids.)
//
// Grid: blockIdx.x picks a chunk of the hidden dim (thread-block folding: any hidden size, one vector per
// thread), blockIdx.y a token, striding over more tokens than gridDim.y holds. Each thread reads its
// token's id and position itself (the same 8 bytes for the whole block: one L1 line, broadcast).
#include <algorithm>
#include <climits>
#include <cmath>

#include "common.cuh"
#include "kernels.h"

namespace eet {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxGridY = 65535;  // hardware limit of gridDim.y

template <typename T, typename IdT, typename PosT, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
embedding_kernel(const IdT* __restrict__ ids,        // [batch, seq] with strides ids_stride_b / ids_stride_s
                 const PosT* __restrict__ pos,       // [batch, seq] with strides pos_stride_b / pos_stride_s
                 const T* __restrict__ wte,          // [vocab, hidden]
                 const T* __restrict__ wpe,          // [positions, hidden] or nullptr
                 T* __restrict__ out,                // [batch, seq, hidden]
                 int64_t ids_stride_b, int64_t ids_stride_s, int64_t pos_stride_b, int64_t pos_stride_s,
                 int64_t seq, int64_t tokens, int64_t vocab, int64_t positions, int64_t hidden) {
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  pdl_trigger();
  // ids and positions come from earlier kernels (PDL contract, common.cuh). Every thread waits, even one with no
  // column: a grid that completes implies its predecessor did, which later kernels' ordering relies on.
  pdl_wait();
  if (col >= hidden) return;  // no barriers below
  for (int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    const int64_t b = t / seq, s = t - b * seq;
    const int64_t id = static_cast<int64_t>(ids[b * ids_stride_b + s * ids_stride_s]);
    bool valid = id >= 0 && id < vocab;
    int64_t p = 0;
    if (wpe != nullptr) {
      p = static_cast<int64_t>(pos[b * pos_stride_b + s * pos_stride_s]);
      valid = valid && p >= 0 && p < positions;
    }
    float v[VEC];
    if (valid) {
      load_float<VEC>(wte + id * hidden + col, v);
      if (wpe != nullptr) {
        float w[VEC];
        load_float<VEC>(wpe + p * hidden + col, w);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] += w[j];
      }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = NAN;
    }
    store_float<VEC>(out + t * hidden + col, v);
  }
}

struct EmbeddingArgs {
  const void* ids;  // [batch, seq]
  const void* pos;  // [batch, seq] or nullptr when wpe is nullptr
  const void* wte;  // [vocab, hidden]
  const void* wpe;  // [positions, hidden] or nullptr
  void* out;        // [batch, seq, hidden]
  int64_t ids_stride_b, ids_stride_s, pos_stride_b, pos_stride_s;
  int64_t batch, seq, vocab, positions, hidden;
};

template <typename T, typename IdT, typename PosT, int VEC>
cudaError_t launch_embedding(const EmbeddingArgs& a, cudaStream_t stream) {
  const int64_t num_vecs = a.hidden / VEC;
  // Equal chunks of at most kMaxThreads vectors, so the last block of a row is not mostly idle.
  const int64_t chunks = ceil_div(num_vecs, kMaxThreads);
  const int64_t threads = round_up(ceil_div(num_vecs, chunks), 32);
  if (chunks > INT_MAX) return cudaErrorInvalidValue;
  const int64_t tokens = a.batch * a.seq;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min(tokens, kMaxGridY)));
  return launch_pdl(embedding_kernel<T, IdT, PosT, VEC>, grid, dim3(static_cast<unsigned>(threads)), 0, stream, 1,
                    static_cast<const IdT*>(a.ids), static_cast<const PosT*>(a.pos), static_cast<const T*>(a.wte),
                    static_cast<const T*>(a.wpe), static_cast<T*>(a.out), a.ids_stride_b, a.ids_stride_s,
                    a.pos_stride_b, a.pos_stride_s, a.seq, tokens, a.vocab, a.positions, a.hidden);
}

// Index types are a runtime choice of the caller (HF passes int64, a decode engine may keep int32).
template <typename T, int VEC>
cudaError_t dispatch_index_types(const EmbeddingArgs& a, bool ids_int64, bool pos_int64, cudaStream_t stream) {
  if (ids_int64) {
    return pos_int64 ? launch_embedding<T, int64_t, int64_t, VEC>(a, stream)
                     : launch_embedding<T, int64_t, int32_t, VEC>(a, stream);
  }
  return pos_int64 ? launch_embedding<T, int32_t, int64_t, VEC>(a, stream)
                   : launch_embedding<T, int32_t, int32_t, VEC>(a, stream);
}

}  // namespace

cudaError_t embedding(DType dtype,
                      const void* ids,  // [batch, seq], int64 if ids_int64 else int32
                      bool ids_int64, int64_t ids_stride_b, int64_t ids_stride_s,
                      const void* pos,  // [batch, seq], int64 if pos_int64 else int32; unused without wpe
                      bool pos_int64, int64_t pos_stride_b, int64_t pos_stride_s,
                      const void* wte,  // [vocab, hidden]
                      const void* wpe,  // [positions, hidden] or nullptr
                      void* out,        // [batch, seq, hidden]
                      int64_t batch, int64_t seq, int64_t vocab, int64_t positions, int64_t hidden,
                      cudaStream_t stream) {
  if (batch < 0 || seq < 0 || vocab < 0 || positions < 0 || hidden < 0) return cudaErrorInvalidValue;
  if (batch == 0 || seq == 0 || hidden == 0) return cudaSuccess;
  if (ids == nullptr || wte == nullptr || out == nullptr || (wpe != nullptr && pos == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const EmbeddingArgs args{ids, wpe != nullptr ? pos : nullptr, wte, wpe, out,
                           ids_stride_b, ids_stride_s, pos_stride_b, pos_stride_s,
                           batch, seq, vocab, positions, hidden};
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kVec = kVec16<T>;
    // Row r of every matrix starts at r * hidden elements: aligned bases and hidden % kVec == 0 keep
    // every vector aligned.
    const bool vectorize = hidden % kVec == 0 && is_aligned(wte, 16) && is_aligned(wpe, 16) && is_aligned(out, 16);
    return vectorize ? dispatch_index_types<T, kVec>(args, ids_int64, pos_int64, stream)
                     : dispatch_index_types<T, 1>(args, ids_int64, pos_int64, stream);
  });
}

}  // namespace eet
