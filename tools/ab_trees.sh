#!/usr/bin/env bash
# Side-by-side builds for one device call: compare the working tree with other revisions of eet_hf on the same GPU,
# in the same run (timings are only comparable there), without a second machine start per variant.
#
# Usage:
#   bash tools/ab_trees.sh prepare NAME REV     # here: REV's code into .ab/NAME (git archive; no results, no weights)
#   bash tools/ab_trees.sh run [NAME...]        # there: build "head" (this tree) and every NAME, then the suite
# NAME: letters, digits and underscores (it also names the AB_ENV_<NAME> variable).
#
# `run` builds every tree's CUDA extension in parallel (each in its own TORCH_EXTENSIONS_DIR, so they never share a
# build), then runs `python -m evaluation.bench --suite $AB_SUITE` (default decode-profile) once per tree and round,
# the trees alternating within a round (AB_ROUNDS, default 2), each run with its own --out-dir under $OUT/ab/. It
# stops starting runs when AB_BUDGET seconds (default 540) are nearly spent, keeps $OUT/ab.tgz up to date after every
# run (a call cut short still returns what finished), and prints one line per (tree, round, case) last:
# step_us, copy_share and the five largest critical-path classes (µs) for decode-profile, else every row of the
# case's first metric.
# Other variables: AB_MODELS (default llama-1b,gpt2-xl), AB_ENV_<NAME> (extra environment for one tree's runs, e.g.
# AB_ENV_head="EET_DECODE_GRAPHS=0"), AB_TESTS (pytest paths run on "head" after the builds and before the suite, in
# quick mode unless AB_TESTS_QUICK=0, within AB_TESTS_TIMEOUT seconds, default 200: the change's GPU tests and its
# timings from one machine start; their result is the summary's second line).
# With the device tool: carry [".ab"] (and ".torch_ext" is kept on a warm machine); $OUT is the tool's.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

prepare() {
  local name=$1 rev=$2 dest=$ROOT/.ab/$1
  rm -rf "$dest" && mkdir -p "$dest"
  git archive "$rev" csrc eet_hf patches evaluation tools setup.py pyproject.toml | tar x -C "$dest"
  # Results and the embedded models' weights are not needed to build and benchmark, and the device tool carries
  # at most 64 MiB.
  rm -rf "$dest/evaluation/results" "$dest"/eet_hf/models/*-tiny
  echo "$name: $(git rev-parse --short "$rev") in $dest ($(du -sh "$dest" | cut -f1))"
}

summarize() {  # DIR LABEL: one line per case of the suite's JSON in DIR
  python3 - "$1" "$2" <<'PY'
import glob, json, sys
for path in glob.glob(sys.argv[1] + "/*.json"):
    rows = json.load(open(path))["rows"]
    got = {(r["case"], r["metric"]): r["value"] for r in rows}
    cases = sorted({c for c, _ in got if c != "device"})
    for case in cases:
        if (case, "step_us") in got:
            text = f"step_us {got[(case, 'step_us')]:9.1f}  copy_share {got.get((case, 'copy_share'), float('nan')):.3f}"
            # The critical path's largest kernel classes too: the printed lines are what a call's output always returns.
            crit = sorted(((v, m[len("crit_us:"):]) for (c, m), v in got.items() if c == case and m.startswith("crit_us:")),
                          reverse=True)
            text += "  " + " ".join(f"{name}={v:.0f}" for v, name in crit[:5])
        else:
            first = next(m for c, m in got if c == case)
            text = f"{first} {got[(case, first)]}"
        print(f"{sys.argv[2]:18s} {case:28s} {text}")
PY
}

run() {
  local out=${OUT:-$ROOT/out} start budget rounds names=(head "$@")
  start=$(date +%s)
  budget=${AB_BUDGET:-540}
  rounds=${AB_ROUNDS:-2}
  mkdir -p "$out/ab"
  export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  export MAX_JOBS=$(( ($(nproc) + ${#names[@]} - 1) / ${#names[@]} ))
  dir_of() { if [ "$1" = head ]; then echo "$ROOT"; else echo "$ROOT/.ab/$1"; fi; }
  local pids=() name
  for name in "${names[@]}"; do
    (cd "$(dir_of "$name")" && TORCH_EXTENSIONS_DIR=$PWD/.torch_ext python3 -c \
      "import sys, eet_hf.ops as o; sys.exit(0 if o.ensure_loaded() else 1)") >"$out/ab/build-$name.log" 2>&1 &
    pids+=($!)
  done
  local i failed=()
  for i in "${!names[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done
  echo "builds: $(( $(date +%s) - start )) s; failed: ${failed[*]:-none}" | tee "$out/ab/summary.txt"
  if [ -n "${AB_TESTS:-}" ]; then
    # shellcheck disable=SC2086 # AB_TESTS: a list of pytest paths
    (cd "$ROOT" && TORCH_EXTENSIONS_DIR=$ROOT/.torch_ext EET_GPU_TEST_QUICK=${AB_TESTS_QUICK:-1} \
      timeout "${AB_TESTS_TIMEOUT:-200}" python3 -m pytest -q $AB_TESTS) >"$out/ab/tests-head.log" 2>&1
    echo "tests (head, exit $?): $(tail -1 "$out/ab/tests-head.log")" | tee -a "$out/ab/summary.txt"
    grep -E "^FAILED" "$out/ab/tests-head.log" | head -20 | tee -a "$out/ab/summary.txt"
    tar czf "$out/ab.tgz" -C "$out" ab 2>/dev/null
  fi
  local round env_var
  for round in $(seq 1 "$rounds"); do
    for name in "${names[@]}"; do
      [[ " ${failed[*]:-} " == *" $name "* ]] && continue
      local left=$(( budget - ($(date +%s) - start) ))
      if [ "$left" -lt 60 ]; then echo "$name round $round: skipped, budget spent" | tee -a "$out/ab/summary.txt"; continue; fi
      env_var=AB_ENV_$name
      # shellcheck disable=SC2086 # AB_ENV_<name>: a list of VAR=value words
      (cd "$(dir_of "$name")" && env TORCH_EXTENSIONS_DIR=$PWD/.torch_ext ${!env_var:-} timeout $(( left - 10 )) \
        python3 -m evaluation.bench --suite "${AB_SUITE:-decode-profile}" --models "${AB_MODELS:-llama-1b,gpt2-xl}" \
        --budget-s $(( left - 20 )) --out-dir "$out/ab/$name-$round") >"$out/ab/$name-$round.log" 2>&1
      summarize "$out/ab/$name-$round" "$name round $round" >>"$out/ab/summary.txt"
      tar czf "$out/ab.tgz" -C "$out" ab 2>/dev/null
    done
  done
  tar czf "$out/ab.tgz" -C "$out" ab 2>/dev/null
  cat "$out/ab/summary.txt"
}

case "${1:-}" in
  prepare)
    [ $# -eq 3 ] && [[ $2 =~ ^[A-Za-z0-9_]+$ ]] || { echo "usage: $0 prepare NAME REV (NAME: [A-Za-z0-9_]+)" >&2; exit 2; }
    prepare "$2" "$3" ;;
  run) shift; run "$@" ;;
  -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
