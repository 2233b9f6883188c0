// decode_linear's host side per kernel: the launch of one (norm, epilogue) pair and one work split (its grid, the W
// ring's depth, shared memory) and the dispatch over the pairs that have a kernel. Each decode_linear_split*.cu
// instantiates one split through EET_DECODE_LINEAR_SPLIT; decode_linear.cu picks the split per call.
#pragma once

#include <algorithm>

#include "common.cuh"
#include "decode_linear.h"
#include "decode_linear_kernel.cuh"
#include "decode_linear_splits.h"

namespace eet {
namespace {

// One (norm, epilogue) pair's kernel with kWarps warps per tile on a persistent grid of 16 warps per SM (two blocks of
// 8 warps or one of 16), each block walking tiles. p == nullptr only asks whether the pair is built
// (decode_linear_has_kernel).
template <typename T, int kNT, int kNorm, int kEpi, int kWarps>
cudaError_t launch(const DecodeLinearParams* p, cudaStream_t stream) {
  if (p == nullptr) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((p->rows + 15) / 16, 16 / kWarps * static_cast<int64_t>(p->num_sms));
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  const auto kernel = decode_linear_kernel<T, kNT, kNorm, kEpi, kWarps>;
  // The ring takes what the block's share of the multiprocessor (16 / kWarps blocks) leaves beside the partial tiles
  // and the staged rows, up to kDecodeLinearMaxRing slots.
  constexpr int64_t kStaticSmem = static_cast<int64_t>(kWarps) * 16 * (8 * kNT + 1) * sizeof(float);
  constexpr int64_t kSlot = decode_linear_ring_slot_bytes(kWarps, kNorm == kNormNone ? kNT : 0);
  const int64_t staged = kNorm == kNormNone ? 0 : decode_linear_staged_bytes(p->m, p->k);
  const int64_t share = std::min<int64_t>(p->smem_per_block, p->smem_per_sm / (16 / kWarps) - kSmemReservedPerBlock);
  const int64_t depth = std::min<int64_t>(kDecodeLinearMaxRing, (share - kStaticSmem - staged) / kSlot);
  if (depth < kDecodeLinearMinRing) return cudaErrorInvalidValue;
  DecodeLinearParams q = *p;
  q.ring_depth = static_cast<int>(depth);
  const int64_t smem = depth * kSlot + staged;
  // Static and dynamic shared memory past 48 KB together need the opt-in, which is per kernel.
  if (smem + kStaticSmem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return launch_pdl(kernel, grid, block, static_cast<size_t>(smem), stream, 1, q);
}

// The (norm, epilogue) pairs with a kernel, listed once: those the fused decoder step runs
// (eet_hf/engine/fused_decoder.py; eet_hf/ops/decode.py KERNEL_PAIRS mirrors this list).
template <typename T, int kNT, int kWarps>
cudaError_t dispatch(DecodeNorm norm, DecodeEpilogue epilogue, const DecodeLinearParams* p, cudaStream_t stream) {
  switch (norm) {
    case DecodeNorm::kNone:  // o_proj / down_proj / out_proj / fc2 with the residual add
      switch (epilogue) {
        case DecodeEpilogue::kResidual: return launch<T, kNT, kNormNone, kEpiResidual, kWarps>(p, stream);
        default: return cudaErrorInvalidValue;
      }
    case DecodeNorm::kRms:  // Llama-style: packed QKV + rotary + KV write, gate/up + act, the LM head, Qwen3's QKV
      switch (epilogue) {
        case DecodeEpilogue::kStore: return launch<T, kNT, kNormRms, kEpiStore, kWarps>(p, stream);
        case DecodeEpilogue::kSiluMul: return launch<T, kNT, kNormRms, kEpiSiluMul, kWarps>(p, stream);
        case DecodeEpilogue::kGeluTanhMul: return launch<T, kNT, kNormRms, kEpiGeluTanhMul, kWarps>(p, stream);
        case DecodeEpilogue::kRotaryKv: return launch<T, kNT, kNormRms, kEpiRotaryKv, kWarps>(p, stream);
        default: return cudaErrorInvalidValue;
      }
    case DecodeNorm::kLayer:  // OPT, GPT-2: packed QKV (+ q scale) + KV write (no rotary), fc1 + ReLU or c_fc +
                              // gelu_new, the LM head
      switch (epilogue) {
        case DecodeEpilogue::kStore: return launch<T, kNT, kNormLayer, kEpiStore, kWarps>(p, stream);
        case DecodeEpilogue::kRelu: return launch<T, kNT, kNormLayer, kEpiRelu, kWarps>(p, stream);
        case DecodeEpilogue::kGeluNew: return launch<T, kNT, kNormLayer, kEpiGeluNew, kWarps>(p, stream);
        case DecodeEpilogue::kRotaryKv: return launch<T, kNT, kNormLayer, kEpiRotaryKv, kWarps>(p, stream);
        default: return cudaErrorInvalidValue;
      }
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

// The definition each split file instantiates: fp16 / bf16, 1-8 or 9-16 x rows.
#define EET_DECODE_LINEAR_SPLIT(kWarps)                                                                        \
  cudaError_t decode_linear_split##kWarps(DType dtype, const DecodeLinearParams* p, DecodeNorm norm,            \
                                          DecodeEpilogue epilogue, cudaStream_t stream) {                      \
    const bool wide = p != nullptr && p->m > 8;                                                                \
    switch (dtype) {                                                                                           \
      case DType::kFloat16:                                                                                    \
        return wide ? dispatch<__half, 2, kWarps>(norm, epilogue, p, stream)                                   \
                    : dispatch<__half, 1, kWarps>(norm, epilogue, p, stream);                                  \
      case DType::kBFloat16:                                                                                   \
        return wide ? dispatch<__nv_bfloat16, 2, kWarps>(norm, epilogue, p, stream)                            \
                    : dispatch<__nv_bfloat16, 1, kWarps>(norm, epilogue, p, stream);                           \
      default: return cudaErrorInvalidValue; /* fp32 has no m16n8k16 path: the caller uses torch's GEMM */      \
    }                                                                                                          \
  }

}  // namespace eet
