#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck over the kernel tests (tests/gpu/test_*_cuda.py but the model tests),
# in quick mode: EET_GPU_TEST_QUICK=1 makes each kernel test file run a fixed sample of its random cases with
# small shapes, so each tool takes about a minute on an H200.
#
#   bash tests/gpu/sanitize.sh            # both tools; OUT defaults to ./out
#   EET_SANITIZER_TOOLS=memcheck bash tests/gpu/sanitize.sh
#
# Writes $OUT/sanitizer-<tool>.log and prints one summary line per tool and test file (also appended to
# $OUT/sanitizer.txt).
# Exit status 0 iff every tool ran clean (no sanitizer error, every test passed).
#
# Choices, and why:
# - The extension is built (or loaded from the cache) before the sanitizer starts: the JIT build is not
#   under test and would take minutes when instrumented.
# - Only eet's kernels are instrumented (--kernel-name kns=eet matches the eet:: namespace in both the mangled
#   and the demangled names): the float64 references in the tests are torch kernels and would dominate the run.
#   If this compute-sanitizer rejects the filter, every kernel is instrumented (slower, still correct).
# - memcheck runs with PYTORCH_NO_CUDA_MEMORY_CACHING=1: every tensor is its own cudaMalloc, so a read or write
#   just past a tensor is reported. With torch's caching allocator it would land in the same pooled segment
#   and go unnoticed. That mode cannot capture CUDA graphs (cudaMalloc during capture), so tests with "graph"
#   in their name are left out of both tools; graph capture does not change what a kernel accesses.
# - API errors are not reported: torch probes the driver with calls that are expected to fail.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
# The same build directory as tests/gpu/run.sh, so an existing build is reused.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_ext}
TIMEOUT=${EET_SANITIZER_TIMEOUT:-120}  # per tool and file

SANITIZER=$(command -v compute-sanitizer || true)
for candidate in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$SANITIZER" ] && [ -x "$candidate" ] && SANITIZER=$candidate
done
if [ -z "$SANITIZER" ]; then
  echo "sanitizer: compute-sanitizer not found (PATH, /usr/local/cuda)" | tee -a "$OUT/sanitizer.txt"
  exit 2
fi

if ! $PY -c "import eet_hf.ops as o, sys; ok = o.ensure_loaded(); print('build ok' if ok else o.build_info()); sys.exit(0 if ok else 1)"; then
  echo "sanitizer: the CUDA extension did not build; nothing to check" | tee -a "$OUT/sanitizer.txt"
  exit 2
fi

# The kernel filter's spelling differs between compute-sanitizer releases: try each on a one-kernel torch program
# (a CUDA process, which the tool needs) and keep the first it accepts.
"$SANITIZER" --help >"$OUT/sanitizer-help.log" 2>&1
FILTER=()
# EET_SANITIZER_FILTER=0: instrument every kernel (slower), e.g. to tell a tool fault tied to the filter from a kernel's.
OPTIONS_TO_TRY="--kernel-name --kernel-regex --filter"
[ "${EET_SANITIZER_FILTER:-1}" = 0 ] && OPTIONS_TO_TRY=""
for option in $OPTIONS_TO_TRY; do
  grep -q -- "$option" "$OUT/sanitizer-help.log" || continue
  if "$SANITIZER" --tool memcheck "$option" kns=eet --error-exitcode 3 \
      $PY -c "import torch; torch.ones(4, device='cuda').sum().item()" >>"$OUT/sanitizer-help.log" 2>&1; then
    FILTER=("$option" kns=eet)
    break
  fi
done
if [ ${#FILTER[@]} -eq 0 ]; then
  echo "sanitizer: no kernel filter accepted (see sanitizer-help.log); instrumenting every kernel"
else
  echo "sanitizer: kernel filter ${FILTER[*]}"
fi

# Deselected: tests that capture CUDA graphs ("graph", and the "engine" tests, whose decode loop captures): memcheck
# runs with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so every allocation is a cudaMalloc, which a capture forbids
# (cudaErrorStreamCaptureUnsupported, measured); "launched" reads the profiler, which the sanitizer displaces.
# The kernel test files (model-level files build whole models, far too slow under the sanitizer);
# EET_SANITIZER_TESTS overrides the list.
mapfile -t TESTS < <(ls ${EET_SANITIZER_TESTS:-tests/gpu/test_attention_cuda.py tests/gpu/test_attention_contracts_cuda.py \
  tests/gpu/test_norm_gelu_cuda.py \
  tests/gpu/test_embedding_kv_cuda.py tests/gpu/test_rotary_cuda.py tests/gpu/test_small_linear_cuda.py \
  tests/gpu/test_attention_decode_cuda.py tests/gpu/test_attention_decode_launch_cuda.py \
  tests/gpu/test_decode_linear_cuda.py tests/gpu/test_qkv_rope_append_cuda.py tests/gpu/test_argmax_cuda.py})
# One run per (tool, file), each with its own time limit, so that one slow file cannot leave the others unchecked;
# the logs of one tool go into one file, $OUT/sanitizer-<tool>.log.
status=0
for tool in ${EET_SANITIZER_TOOLS:-memcheck racecheck}; do
  log="$OUT/sanitizer-$tool.log"
  : >"$log"
  env_extra=()
  [ "$tool" = memcheck ] && env_extra=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
  for file in "${TESTS[@]}"; do
    start=$(date +%s)
    part=$(mktemp)
    env EET_GPU_TEST_QUICK=1 "${env_extra[@]}" timeout "$TIMEOUT" \
      "$SANITIZER" --tool "$tool" "${FILTER[@]}" --error-exitcode 3 --report-api-errors no --print-limit 50 \
      $PY -m pytest -v -p no:cacheprovider -k "not graph and not raw_op and not launched and not engine" "$file" \
      >"$part" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    { echo "===== $tool $file (exit $rc, ${secs}s)"; cat "$part"; } >>"$log"
    errors=$(grep -oE "ERROR SUMMARY: [0-9]+ errors?" "$part" | tail -n 1)
    tests=$(grep -E "[0-9]+ (passed|failed).* in [0-9.]+s" "$part" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
    [ $rc -eq 124 ] && errors="TIMED OUT after ${TIMEOUT}s"
    rm -f "$part"
    line="sanitizer $tool $(basename "$file"): exit $rc, ${errors:-no ERROR SUMMARY}, pytest: ${tests:-no result}, ${secs}s"
    echo "$line" | tee -a "$OUT/sanitizer.txt"
    [ $rc -ne 0 ] && status=1
  done
  # small_linear's cluster split-K alone in a process (tests/gpu/harness_small_linear.cu: the real kernel and launcher,
  # no torch): inside the pytest process, racecheck stopped with "Internal Sanitizer Error: failed to handle a
  # hardware exception" at every cluster launch (sanitizer-h200.md, 2026-12-02), while the same launches in this
  # harness ran clean. Every split count (1 = no cluster) on a decode-step shape and a long-K one.
  [ "${EET_SANITIZER_HARNESS:-1}" = 0 ] && continue
  harness="$OUT/harness_small_linear"
  if [ ! -x "$harness" ] && ! ${NVCC:-nvcc} -std=c++17 -O2 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -o "$harness" \
      tests/gpu/harness_small_linear.cu csrc/small_linear.cu csrc/cluster_fit.cu csrc/pdl.cu >>"$log" 2>&1; then
    echo "sanitizer $tool small_linear harness: build failed (see $log)" | tee -a "$OUT/sanitizer.txt"
    status=1
    continue
  fi
  runs=0 bad=0
  for shape in "1 768 768" "8 64 12288"; do
    for splits in 1 2 4 8; do
      part=$(mktemp)
      timeout 120 "$SANITIZER" --tool "$tool" --error-exitcode 3 "$harness" $shape $splits >"$part" 2>&1
      rc=$?
      { echo "===== $tool harness_small_linear $shape splits $splits (exit $rc)"; cat "$part"; } >>"$log"
      grep -q ": ok (0 wrong)" "$part" || rc=4
      runs=$((runs + 1))
      [ $rc -ne 0 ] && bad=$((bad + 1))
      rm -f "$part"
    done
  done
  echo "sanitizer $tool small_linear harness: $((runs - bad)) of $runs runs clean (splits 1-8)" \
    | tee -a "$OUT/sanitizer.txt"
  [ $bad -ne 0 ] && status=1
done
rm -f "$OUT/harness_small_linear"
exit $status
