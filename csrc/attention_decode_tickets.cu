// The ticket counters of the decode kernels' ticket merge (attention_decode_ticket.cuh): one unsigned per
// (batch, kv head, query chunk) group of a launch, in a module-scope device array. It is zero when the module loads
// and every launch leaves it zero (the last block of each group resets its counter), so no launch needs a memset
// node, an allocation or any setup, in or out of a CUDA graph capture. Launches on one stream never overlap in it:
// a decode kernel reads its counters only after pdl_wait(), when the previous grid has completed.
#include <cuda_runtime.h>

#include <cstdint>

#include "attention_kernels.h"

namespace eet {
namespace attn {
namespace {

__device__ unsigned g_decode_tickets[kDecodeTicketSlots];

}  // namespace

unsigned* decode_tickets(int64_t groups) {
  if (groups <= 0 || groups > kDecodeTicketSlots) return nullptr;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return nullptr;
  static void* addresses[64] = {};  // per device; a race only stores the same address twice
  if (addresses[device] == nullptr) {
    void* a = nullptr;
    if (cudaGetSymbolAddress(&a, g_decode_tickets) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    addresses[device] = a;
  }
  return static_cast<unsigned*>(addresses[device]);
}

}  // namespace attn
}  // namespace eet
