#!/usr/bin/env bash
# On a CUDA machine: build the extension, run the GPU tests, the sanitizer pass and the benchmarks, and print a
# short table last. Logs and result files go to $OUT (default ./out); the device tool brings $OUT back.
#   bash tests/gpu/run.sh                 # everything
#   EET_SKIP_SANITIZER=1 bash tests/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
# Keep the build inside the checkout so it can be carried to the next machine (ninja rebuilds only what changed).
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_ext}
PY=${PYTHON:-python3}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"

start=$(date +%s)
$PY -c "import time, eet_hf.ops as o; t=time.time(); ok=o.ensure_loaded(); print('build ok' if ok else 'BUILD FAILED', round(time.time()-t,1), 's', o.build_info())" 2>&1 | tee "$OUT/build.log"
echo "build: $(( $(date +%s) - start )) s"

$PY -m pytest -q tests/gpu -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log" | tail -n 40

if [ -z "${EET_SKIP_SANITIZER:-}" ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    EET_GPU_TEST_QUICK=1 timeout "${EET_SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool $tool --error-exitcode 3 \
      $PY -m pytest -q -x tests/gpu -k "cuda and not models" -p no:cacheprovider >"$OUT/sanitizer-$tool.log" 2>&1
    echo "sanitizer $tool: exit $? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer-$tool.log") clean summaries)" | tee -a "$OUT/sanitizer.txt"
    grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -n 3 | tee -a "$OUT/sanitizer.txt"
  done
fi

# Parity and perplexity of the embedded models on the GPU (all dtypes), written next to the other results.
timeout "${EET_SUITE_TIMEOUT:-300}" $PY -m evaluation.parity --out-dir "$OUT" >"$OUT/parity.log" 2>&1
echo "parity: exit $?" | tee -a "$OUT/suites.txt"
timeout "${EET_SUITE_TIMEOUT:-300}" $PY -m evaluation.perplexity --max-tokens 8192 --out-dir "$OUT" >"$OUT/perplexity.log" 2>&1
echo "perplexity: exit $?" | tee -a "$OUT/suites.txt"

$PY -m evaluation.gpu_report --out "$OUT" 2>&1 | tee "$OUT/report.log" | tail -n 60
tail -n 25 "$OUT/parity.log"; tail -n 8 "$OUT/perplexity.log"; cat "$OUT/sanitizer.txt" "$OUT/suites.txt" 2>/dev/null
