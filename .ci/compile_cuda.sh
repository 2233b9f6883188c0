#!/usr/bin/env bash
# Compile-check every kernel file in csrc/ for sm_90 with the machine's nvcc (no GPU needed).
# bindings.cpp includes torch's CUDA headers and is compiled only by the JIT build on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=$(mktemp -d)
status=0
for f in csrc/*.cu; do
  if "$NVCC" -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Xptxas -warn-spills -Icsrc -c "$f" -o "$out/$(basename "$f").o"; then
    echo "compiled $f"
  else
    echo "FAILED to compile $f"; status=1
  fi
done
rm -rf "$out"
exit $status
