#!/usr/bin/env bash
# Native backtrace of a raw eet op throwing on a bad argument (it crashed the process on the H200): cuda-gdb
# also debugs host code. Usage on the GPU machine: bash scripts/diagnose_op_error.sh > $OUT/op-error-bt.txt
cd "$(dirname "$0")/.."
cat >/tmp/eet_op_error.py <<'PY'
import torch, eet_hf.ops as o
assert o.ensure_loaded()
x = torch.randn(2, 8, device="cuda", dtype=torch.float16)
try:
    torch.ops.eet.layer_norm(x, torch.randn(9, device="cuda", dtype=torch.float16), None, 1e-5)
except RuntimeError as error:
    print("raised:", str(error).splitlines()[0])
PY
timeout 120 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 /tmp/eet_op_error.py 2>&1 | \
  grep -v "^\[New Thread\|^\[Thread" | head -120
