// Whether programmatic dependent launches may be recorded into a CUDA graph (design of PDL in common.cuh).
//
// Why a probe: a launch refused during stream capture cannot be retried, because the refusal invalidates the whole
// capture. The H200's driver records PDL launches into graphs, but a tool in between may not (compute-sanitizer
// refuses them with cudaErrorStreamCaptureUnsupported, measured). So before the first PDL launch into a capture,
// one tiny capture on a private stream tries two PDL launches, and the answer holds for the process.
#include "common.cuh"

namespace eet {
namespace {

__global__ void pdl_probe_kernel() { pdl_wait(); }

bool probe_pdl_capture() {
  // Relaxed mode lets this thread create a stream and capture on it while another stream is being captured.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  if (cudaThreadExchangeStreamCaptureMode(&mode) != cudaSuccess) return false;
  bool ok = false;
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess) {
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed) == cudaSuccess) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(1);
      cfg.blockDim = dim3(32);
      cfg.stream = stream;
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr.val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      const bool launched = cudaLaunchKernelEx(&cfg, pdl_probe_kernel) == cudaSuccess &&
                            cudaLaunchKernelEx(&cfg, pdl_probe_kernel) == cudaSuccess;  // a programmatic edge
      cudaGraph_t graph = nullptr;
      const bool ended = cudaStreamEndCapture(stream, &graph) == cudaSuccess;
      ok = launched && ended && graph != nullptr;
      if (graph != nullptr) {
        cudaGraphExec_t exec = nullptr;
        ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
        if (exec != nullptr) cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
      }
    }
    cudaStreamDestroy(stream);
  }
  (void)cudaGetLastError();  // the probe's refusals are not the caller's errors
  cudaThreadExchangeStreamCaptureMode(&mode);
  return ok;
}

}  // namespace

bool pdl_capture_supported() {
  static const bool supported = probe_pdl_capture();
  return supported;
}

}  // namespace eet
