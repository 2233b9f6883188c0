#!/usr/bin/env bash
# Compile-check every kernel file in csrc/ for sm_90 with the machine's nvcc (no GPU needed), then, where torch
# is importable, syntax-check the torch bindings (csrc/bindings*.cpp) with the host compiler against torch's
# headers. The bindings are compiled for real only by the JIT build on a GPU machine; this catches a broken
# declaration or call before that.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
PY=${PYTHON:-python3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for f in csrc/*.cu; do
  if "$NVCC" -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Xptxas -warn-spills -Icsrc -c "$f" -o "$out/$(basename "$f").o"; then
    echo "compiled $f"
  else
    echo "FAILED to compile $f"; status=1
  fi
done

# torch's ATen/cuda headers include the cuSPARSE / cuBLAS / cuSOLVER headers, which a CUDA toolkit without
# those libraries lacks; the bindings use none of them, so one-line stand-ins with the handle types suffice.
if torch_inc=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join(c.include_paths()))" 2>/dev/null); then
  stubs="$out/stubs"
  mkdir -p "$stubs/c10/cuda/impl"
  : > "$stubs/c10/cuda/impl/cuda_cmake_macros.h"
  echo 'typedef struct cusparseContext* cusparseHandle_t; typedef int cusparseStatus_t;' > "$stubs/cusparse.h"
  echo 'typedef struct cublasContext* cublasHandle_t; typedef int cublasStatus_t;' > "$stubs/cublas_v2.h"
  echo 'typedef struct cublasLtContext* cublasLtHandle_t;' > "$stubs/cublasLt.h"
  echo 'typedef struct cusolverDnContext* cusolverDnHandle_t;' > "$stubs/cusolverDn.h"
  echo 'typedef int cusolverStatus_t;' > "$stubs/cusolver_common.h"
  cuda_inc=/usr/local/cuda/include  # nvcc may be a wrapper script elsewhere; prefer CUDA_HOME, then nvcc's own tree
  for root in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")"; do
    if [ -n "$root" ] && [ -f "$root/include/cuda_runtime_api.h" ]; then cuda_inc="$root/include"; break; fi
  done
  incs=(-I"$stubs" -I"$cuda_inc" -Icsrc)
  for d in $torch_inc; do incs+=(-I"$d"); done
  for f in csrc/*.cpp; do
    if "${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wno-c++20-extensions "${incs[@]}" "$f"; then
      echo "syntax-checked $f"
    else
      echo "FAILED to syntax-check $f"; status=1
    fi
  done
else
  echo "torch not importable with $PY: skipped the bindings syntax check"
fi
exit $status
