#!/usr/bin/env bash
# On a CUDA machine: the one script for the GPU side of issue #4. Stages, in order:
#   env         nvidia-smi, torch and transformers versions
#   build       the CUDA extension (JIT, cached in .torch_ext so a carried build is reused)
#   deps        datasets from carried wheels (tests/gpu/install_wheels.sh) when .gpu_wheels/ is there
#   tests       pytest tests/gpu (or the paths in EET_TESTS)             skip: EET_SKIP_TESTS=1
#   sanitizer   tests/gpu/sanitize.sh (memcheck, racecheck)              skip: EET_SKIP_SANITIZER=1
#   parity      python -m evaluation.parity $EET_PARITY_ARGS             skip: EET_SKIP_PARITY=1
#   perplexity  python -m evaluation.perplexity $EET_PPL_ARGS            skip: EET_SKIP_PPL=1
#   bench-<s>   python -m evaluation.bench --suite <s>, for each suite in EET_BENCH_SUITES (default: none)
#   report      gpu-tests + kernel benchmark results (EET_SKIP_KERNEL_BENCH=1: tests only)
# and prints a short table last. Every stage has its own `timeout` (EET_<STAGE>_TIMEOUT, seconds) and log,
# $OUT/<stage>.log; results files land in $OUT (default ./out), which the device tool brings back.
# The device tool allows 10 minutes per call, so split the work over calls on the same warm machine, e.g.:
#   EET_SKIP_PARITY=1 EET_SKIP_PPL=1 bash tests/gpu/run.sh                 # 1: build, tests, sanitizer, report
#   EET_SKIP_TESTS=1 EET_SKIP_SANITIZER=1 EET_SKIP_REPORT=1 bash tests/gpu/run.sh   # 2: deps, parity, perplexity
#   EET_SKIP_TESTS=1 EET_SKIP_SANITIZER=1 EET_SKIP_PARITY=1 EET_SKIP_PPL=1 EET_SKIP_REPORT=1 \
#     EET_BENCH_SUITES=generate bash tests/gpu/run.sh                     # 3..: one benchmark suite per call
# On the device tool, set EET_OUT_TARBALL=1 (outputs under $OUT/run/, packed into $OUT/run.tgz after every stage).
# Estimates on an H200 with a warm build: tests ~1-2 min, sanitizer ~2 min, parity --full ~3-4 min (GPT-2 XL in
# three dtypes is most of it; the embedded models alone ~1 min), perplexity --full ~1 min.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
# EET_OUT_TARBALL=1: the device tool returns at most 8 files from $OUT, and nothing a command meant to pack at its end
# when the call's time limit kills it first. So every output goes to $OUT/run/ and $OUT/run.tgz is refreshed after
# each stage: a call cut short still returns what its finished stages wrote.
PACK_DIR=""
if [ "${EET_OUT_TARBALL:-0}" = 1 ]; then
  PACK_DIR=$OUT
  OUT=$OUT/run
fi
export OUT
mkdir -p "$OUT"
: >"$OUT/stages.txt"
pack() {
  [ -n "$PACK_DIR" ] || return 0
  tar czf "$PACK_DIR/run.tgz.part" -C "$OUT" . 2>/dev/null && mv "$PACK_DIR/run.tgz.part" "$PACK_DIR/run.tgz"
}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} MPLBACKEND=Agg
# The GPU host has no network: never wait on the hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Keep the build inside the checkout so it can be carried to the next machine (ninja rebuilds only what changed).
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_ext}
PY=${PYTHON:-python3}
export PYTHON=$PY

# stage NAME LIMIT_S CMD...: run CMD with its own time limit and log; one line per stage in stages.txt.
stage() {
  local name=$1 limit=$2 start rc note=""
  shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout -k 15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && note="  TIMED OUT after ${limit}s"
  printf '%-18s exit %3d  %5d s%s\n' "$name" "$rc" "$(($(date +%s) - start))" "$note" | tee -a "$OUT/stages.txt"
  pack
  return $rc
}
skipped() { printf '%-18s skipped (%s)\n' "$1" "$2" | tee -a "$OUT/stages.txt"; }

stage env 60 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PYTHON" -c "import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__)"'
cp "$OUT/env.log" "$OUT/env.txt"

stage build "${EET_BUILD_TIMEOUT:-540}" $PY -c "import sys, time, eet_hf.ops as o; t = time.time(); ok = o.ensure_loaded()
print('build ok' if ok else 'BUILD FAILED', round(time.time() - t, 1), 's', o.build_info()); sys.exit(0 if ok else 1)"
tail -n 3 "$OUT/build.log"

if [ -n "${EET_SKIP_DEPS:-}" ]; then
  skipped deps EET_SKIP_DEPS
elif [ -f .gpu_wheels/eval-wheels.tar.xz ] || [ -d .gpu_site ]; then
  stage deps "${EET_DEPS_TIMEOUT:-240}" bash tests/gpu/install_wheels.sh
  # Installed (now or by an earlier call on this machine) into .gpu_site; the suites import from there.
  [ -d .gpu_site ] && export PYTHONPATH="$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
else
  skipped deps "no .gpu_wheels/: carry it (tools/gpu_wheels.sh builds it) or perplexity reads the file directly"
fi

if [ -n "${EET_SKIP_TESTS:-}" ]; then
  skipped tests EET_SKIP_TESTS
else
  # shellcheck disable=SC2086 # EET_TESTS: a list of test paths (default: all of tests/gpu)
  stage tests "${EET_TESTS_TIMEOUT:-480}" $PY -m pytest -v -rfE --tb=short ${EET_TESTS:-tests/gpu} -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml"
  tail -n 5 "$OUT/tests.log"
fi

if [ -n "${EET_SKIP_SANITIZER:-}" ]; then
  skipped sanitizer EET_SKIP_SANITIZER
elif [ -f tests/gpu/sanitize.sh ]; then
  # sanitize.sh bounds each tool by EET_SANITIZER_TIMEOUT itself; this limit only guards the whole stage.
  stage sanitizer "${EET_SANITIZER_STAGE_TIMEOUT:-420}" bash tests/gpu/sanitize.sh
else
  skipped sanitizer "tests/gpu/sanitize.sh missing"
fi

if [ -n "${EET_SKIP_PARITY:-}" ]; then
  skipped parity EET_SKIP_PARITY
else
  # shellcheck disable=SC2086 # EET_PARITY_ARGS is a list of flags
  stage parity "${EET_PARITY_TIMEOUT:-540}" $PY -m evaluation.parity ${EET_PARITY_ARGS---full} --out-dir "$OUT"
fi

if [ -n "${EET_SKIP_PPL:-}" ]; then
  skipped perplexity EET_SKIP_PPL
else
  # shellcheck disable=SC2086
  stage perplexity "${EET_PPL_TIMEOUT:-300}" $PY -m evaluation.perplexity ${EET_PPL_ARGS---full --max-tokens 8192} \
    --out-dir "$OUT"
fi

BENCH_SUITES=${EET_BENCH_SUITES:-}
for suite in ${BENCH_SUITES//,/ }; do
  # shellcheck disable=SC2086 # EET_BENCH_ARGS is a list of flags, e.g. "--models gpt2,gpt2-xl"
  stage "bench-$suite" "${EET_BENCH_TIMEOUT:-590}" $PY -m evaluation.bench --suite "$suite" --out-dir "$OUT" \
    ${EET_BENCH_ARGS:-}
done

if [ -n "${EET_SKIP_REPORT:-}" ]; then
  skipped report EET_SKIP_REPORT
else
  stage report "${EET_REPORT_TIMEOUT:-300}" $PY -m evaluation.gpu_report --out "$OUT" \
    ${EET_SKIP_KERNEL_BENCH:+--skip-bench}
fi

# The short table, last, so it is what a truncated console shows.
echo
[ -f "$OUT/report.log" ] && tail -n 45 "$OUT/report.log"
if [ -f "$OUT/parity.log" ]; then
  echo "-- parity: failed checks, then the summary"
  grep -E " FAIL$" "$OUT/parity.log" | head -n 20
  grep -E "checks passed|Error|error:" "$OUT/parity.log" | tail -n 3
fi
if [ -f "$OUT/perplexity.log" ]; then
  echo "-- perplexity"
  grep -E "rel_delta|scored_tokens|^note:|FAILED|passed;" "$OUT/perplexity.log" | tail -n 30
fi
for suite in ${BENCH_SUITES//,/ }; do
  echo "-- bench $suite"
  tail -n 12 "$OUT/bench-$suite.log"
done
[ -f "$OUT/sanitizer.txt" ] && { echo "-- sanitizer"; cat "$OUT/sanitizer.txt"; }
echo "-- stages (logs in $OUT)"
cat "$OUT/stages.txt"
! grep -qE "exit +[1-9]" "$OUT/stages.txt"
