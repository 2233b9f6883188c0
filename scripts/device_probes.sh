#!/usr/bin/env bash
# Developer probes for one device call (not the test/benchmark script, which is tests/gpu/run.sh): each probe named
# in PROBES runs with its own time limit and log under $OUT, and a summary line per probe is printed last.
#
#   PROBES="decode-sweep ncu-decode racecheck-repro sdpa-first-call inplace-tests inplace-bench" \
#     bash scripts/device_probes.sh
#
#   decode-sweep      scripts/sweep_decode.py: decode attention time per forced split count
#   ncu-decode        Nsight Compute on one decode launch per shape (bs1 h25 d64 / h32 d128, ctx 2048)
#   ncu-decode-source Nsight Compute's per-SASS-instruction stall samples of one planned batch-1 decode launch
#   racecheck-repro   compute-sanitizer racecheck on scripts/repro_cluster_racecheck.cu (no torch, no eet code)
#   sdpa-first-call   scripts/probe_sdpa_first_call.py: cuDNN's per-length plan cost against its saving
#   inplace-tests     the encoder GPU tests with EET_HF_PACK_IN_PLACE=1
#   inplace-bench     encoder bench rows of engine eet, bert-base, in-place packing off and on
#   racecheck-small-linear  racecheck on eet::small_linear alone (scripts/harness_small_linear.cu), per split count
#   decode-prefetch-ab  decode attention, planned splits, L2 prefetch on and off
#   decode-kernel-bench the kernel bench's decode rows alone
#   sanitize-decode   tests/gpu/sanitize.sh (memcheck, racecheck) over the decode attention and kernel-choice tests
#   sanitize-small-linear-nofilter  racecheck over the small_linear tests, every kernel instrumented
#   encoder-tests     the encoder GPU tests (defaults)
#   encoder-bench-base  the encoder suite, bert-base, every engine, merged into a copy of the committed results
#   gelu-tests        the layer norm / bias_gelu GPU tests (the 16-bit fast erf form among them)
#   norm-kernel-bench the kernel bench's layer norm, bias_gelu and small_linear rows alone
#   decode-mma-ab     decode attention, planned splits, tensor-core kernel and CUDA-core kernel (EET_HF_DECODE_MMA=0)
#   decode-combine-sweep  decode attention on the combine path (no cluster) for 2..32 splits, next to the cluster ones
#   gelu-block-sweep  bias_gelu alone (scripts/harness_bias_gelu.cu) at several rows-per-thread / threads-per-block
#   read-ceiling      scripts/harness_read_ceiling.cu: the best plain read of the decode cache sizes, and what clusters
#                     and PDL cost on their own
#   decode-shape-sweep  decode attention alone (scripts/harness_decode.cu) for block shapes (keys per warp step, stages
#                     of the tensor-core kernel, warps per block, blocks per SM) fixed at compile time, every forced
#                     split, checked against an fp32 reference (a spec ending in :loads builds the tensor-core kernel
#                     with its loads alone, unchecked)
#   decode-sass       cuobjdump -sass of the tensor-core decode kernel
#   decode-intercept  scripts/harness_decode.cu (committed block shape) under the default launch, EET_HF_DECODE_PREFETCH=0,
#                     EET_HF_PDL=0 and EET_HF_DECODE_MMA=0: what each part of the launch costs at every context
#   read-paths        scripts/harness_read_paths.cu: decode-shaped reads with no arithmetic (ldg / cp.async / bulk
#                     copies, bounds first, clusters of 8 or 10 under each scheduling policy; then block counts,
#                     cluster sizes that fit in one wave, atomic-ticket merges without clusters and the two-kernel
#                     combine path)
#   decode-regs       scripts/harness_decode.cu with the default kernel choice, EET_HF_DECODE_MMA_REGS=0 and =1
#   decode-floor      scripts/harness_decode.cu (default kernel choice) and scripts/harness_read_paths.cu in one call,
#                     written as decode-floor-<gpu>.{json,md} by scripts/decode_floor_rows.py: the batch-1 decode next to
#                     the same bytes read with no arithmetic, without a merge and with each merge across SMs
#   decode-ab         scripts/harness_decode.cu built from $DECODE_AB_BASE (a copy of another commit's csrc/, e.g.
#                     `mkdir ab-base && git archive <ref> csrc | tar -x -C ab-base`: untracked, so it travels with the
#                     device call; delete it afterwards) and from this checkout, run base / new / base / new
#                     in one call (the same machine: the only fair comparison), then this checkout with the register
#                     kernel forced off and on
#   prefill-kernel-bench  the kernel bench's prefill rows alone
#   parity-full       python -m evaluation.parity --full
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_ext}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
# EET_OUT_TARBALL=1: outputs under $OUT/probes/, packed into $OUT/probes.tgz after every probe (tests/gpu/run.sh says
# why: the device tool returns at most 8 files, and nothing once a call's time limit has killed it).
PACK_DIR=""
if [ "${EET_OUT_TARBALL:-0}" = 1 ]; then
  PACK_DIR=$OUT
  OUT=$OUT/probes
  mkdir -p "$OUT"
fi
export OUT
: >"$OUT/probes.txt"

probe() {  # probe NAME LIMIT_S CMD...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%-18s exit %3d  %4d s\n' "$name" "$rc" "$(($(date +%s) - start))" | tee -a "$OUT/probes.txt"
  if [ -n "$PACK_DIR" ]; then
    tar czf "$PACK_DIR/probes.tgz.part" -C "$OUT" . 2>/dev/null && mv "$PACK_DIR/probes.tgz.part" "$PACK_DIR/probes.tgz"
  fi
}

# SKIP_BUILD=1: probes that need no torch extension (the standalone harnesses) skip its ~40 s build.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  probe build 300 $PY -c "import eet_hf.ops as o, sys; ok = o.ensure_loaded(); print(ok, o.build_info()); sys.exit(0 if ok else 1)"
fi

NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
ONE_DECODE='import sys, torch, eet_hf.ops as o
h, d, ctx = (int(a) for a in sys.argv[1:4])
q = torch.randn(1, 1, h, d, device="cuda", dtype=torch.float16).transpose(1, 2)
k, v = (torch.randn(1, h, ctx, d, device="cuda", dtype=torch.float16) for _ in range(2))
b = [torch.zeros(1, dtype=torch.int32, device="cuda"), torch.full((1,), ctx, dtype=torch.int32, device="cuda"),
     torch.full((1,), ctx - 1, dtype=torch.int32, device="cuda")]
for _ in range(3): o.attention(q, k, v, *b, True, d ** -0.5)
torch.cuda.synchronize()'

# scripts/harness_decode.cu with the committed block shape, as $OUT/decode-harness (or $1 from kernel sources in $2).
build_decode_harness() {
  local out=${1:-$OUT/decode-harness} src=${2:-csrc}
  probe "$(basename "$out")-build" 200 nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -I"$src" -o "$out" \
    scripts/harness_decode.cu "$src"/attention_decode.cu "$src"/attention_decode_split.cu \
    "$src"/attention_decode_mma.cu "$src"/attention_decode_mma_regs.cu "$src"/attention_decode_combine.cu \
    "$src"/cluster_fit.cu "$src"/pdl.cu
}

for p in ${PROBES:-decode-sweep}; do
  case $p in
    decode-sweep) probe "$p" 240 $PY scripts/sweep_decode.py --out "$OUT" ;;
    decode-tests) probe "$p" 300 $PY -m pytest -q tests/gpu/test_attention_decode_cuda.py \
      tests/gpu/test_attention_decode_launch_cuda.py tests/gpu/test_attention_cuda.py \
      tests/gpu/test_prefill_backend_cuda.py ;;
    ncu-decode)
      for shape in "25 64 2048" "32 128 2048"; do
        probe "$p-${shape// /-}" 120 "$NCU" --clock-control none --kernel-name 'regex:decode_(mma_)?kernel' --launch-skip 2 \
          --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section LaunchStats \
          --section Occupancy --section WarpStateStats --section SchedulerStats \
          --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' $PY -c "$ONE_DECODE" $shape
      done ;;
    ncu-decode-source)  # per-instruction stall samples of one planned batch-1 decode launch (tensor-core kernel)
      for shape in "25 64 4096" "32 128 2048"; do
        probe "$p-${shape// /-}" 150 "$NCU" --clock-control none --kernel-name 'regex:decode_mma_kernel' \
          --launch-skip 2 --launch-count 1 --section SourceCounters --section WarpStateStats --section SpeedOfLight \
          --import-source no -f -o "$OUT/ncu-${shape// /-}" $PY -c "$ONE_DECODE" $shape
        probe "$p-${shape// /-}-sass" 120 "$NCU" -i "$OUT/ncu-${shape// /-}.ncu-rep" --page source --csv \
          --print-source sass
        rm -f "$OUT/ncu-${shape// /-}.ncu-rep"
      done ;;
    racecheck-repro)
      probe repro-build 120 nvcc -O2 -arch=sm_90 -o "$OUT/repro" scripts/repro_cluster_racecheck.cu
      for v in static static-small static-128 dynamic; do
        for w in 1 2 8; do
          probe "racecheck-$v-$w" 60 "$SAN" --tool racecheck --error-exitcode 3 "$OUT/repro" "$v" "$w"
        done
      done
      probe "memcheck-static-8" 60 "$SAN" --tool memcheck --error-exitcode 3 "$OUT/repro" static 8
      probe "synccheck-static-8" 60 "$SAN" --tool synccheck --error-exitcode 3 "$OUT/repro" static 8
      rm -f "$OUT/repro" ;;
    racecheck-small-linear)
      probe harness-build 180 nvcc -std=c++17 -O2 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -o "$OUT/harness" \
        scripts/harness_small_linear.cu csrc/small_linear.cu csrc/cluster_fit.cu csrc/pdl.cu
      for shape in "1 768 768" "8 64 12288"; do
        for splits in 1 2 4 8; do
          for pdl in 1 0; do
            probe "racecheck-sl-${shape// /-}-s$splits-pdl$pdl" 60 env EET_HF_SMALL_LINEAR_SPLITS=$splits \
              EET_HF_PDL=$pdl "$SAN" --tool racecheck --error-exitcode 3 "$OUT/harness" $shape
          done
        done
      done
      probe "plain-sl-1-768-768-s8" 60 env EET_HF_SMALL_LINEAR_SPLITS=8 "$OUT/harness" 1 768 768
      probe "memcheck-sl-1-768-768-s8" 60 env EET_HF_SMALL_LINEAR_SPLITS=8 "$SAN" --tool memcheck --error-exitcode 3 \
        "$OUT/harness" 1 768 768
      probe "racecheck-sl-1-768-768-s8-nomemcpyasync" 60 env EET_HF_SMALL_LINEAR_SPLITS=8 "$SAN" --tool racecheck \
        --racecheck-memcpy-async no --error-exitcode 3 "$OUT/harness" 1 768 768
      rm -f "$OUT/harness" ;;
    decode-prefetch-ab)
      probe decode-planned-prefetch 120 $PY scripts/sweep_decode.py --max-splits 0 --tag=-prefetch --out "$OUT"
      probe decode-planned-noprefetch 120 env EET_HF_DECODE_PREFETCH=0 $PY scripts/sweep_decode.py --max-splits 0 \
        --tag=-noprefetch --out "$OUT" ;;
    gelu-tests) probe "$p" 240 $PY -m pytest -q tests/gpu/test_norm_gelu_cuda.py ;;
    norm-kernel-bench) probe "$p" 240 $PY -m evaluation.bench_kernels_norm ;;
    decode-mma-ab)
      probe decode-planned-mma 120 $PY scripts/sweep_decode.py --max-splits 0 --tag=-mma --out "$OUT"
      probe decode-planned-cudacore 120 env EET_HF_DECODE_MMA=0 $PY scripts/sweep_decode.py --max-splits 0 \
        --tag=-cudacore --out "$OUT" ;;
    decode-combine-sweep) probe "$p" 300 $PY scripts/sweep_decode.py --combine-splits 32 --tag=-combine --out "$OUT" ;;
    gelu-block-sweep)
      for shape in "4 256" "1 256" "2 256" "8 256" "4 128" "4 512" "2 512"; do
        set -- $shape
        timeout 120 nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -DEET_GELU_ROWS_PER_THREAD=$1 \
          -DEET_GELU_THREADS=$2 -o "$OUT/gelu-r$1-t$2" scripts/harness_bias_gelu.cu csrc/activation.cu \
          >"$OUT/gelu-build-r$1-t$2.log" 2>&1 &
      done
      wait  # the builds in parallel, the timings one at a time
      for shape in "4 256" "1 256" "2 256" "8 256" "4 128" "4 512" "2 512"; do
        set -- $shape
        probe "gelu-r$1-t$2" 60 "$OUT/gelu-r$1-t$2" "r$1-t$2"
        rm -f "$OUT/gelu-r$1-t$2"
      done ;;
    decode-kernel-bench) probe "$p" 240 $PY -m evaluation.bench_kernels_attention --only decode --json "$OUT/decode.json" ;;
    sanitize-decode) probe "$p" 360 env EET_SANITIZER_TESTS="tests/gpu/test_attention_decode_cuda.py
        tests/gpu/test_attention_decode_launch_cuda.py" EET_SANITIZER_TIMEOUT=140 OUT="$OUT" bash tests/gpu/sanitize.sh ;;
    sanitize-small-linear-nofilter) probe "$p" 200 env EET_SANITIZER_TESTS=tests/gpu/test_small_linear_cuda.py \
        EET_SANITIZER_TOOLS=racecheck EET_SANITIZER_FILTER=0 EET_SANITIZER_TIMEOUT=150 OUT="$OUT/nofilter" \
        bash tests/gpu/sanitize.sh ;;
    encoder-tests) probe "$p" 300 $PY -m pytest -q tests/gpu/test_encoder_cuda.py tests/gpu/test_encoder_model_graphs_cuda.py ;;
    encoder-bench-base)
      mkdir -p "$OUT/encoder" && cp evaluation/results/encoder-h200.json "$OUT/encoder/"
      probe "$p" 240 $PY -m evaluation.bench --suite encoder --models bert-base --budget-s 220 --merge \
        --out-dir "$OUT/encoder" ;;
    sdpa-first-call) probe "$p" 240 $PY scripts/probe_sdpa_first_call.py --out "$OUT" --results-dir "$OUT" ;;
    inplace-tests)
      probe "$p" 300 env EET_HF_PACK_IN_PLACE=1 $PY -m pytest -q -x tests/gpu/test_encoder_cuda.py \
        tests/gpu/test_encoder_model_graphs_cuda.py ;;
    inplace-bench)
      probe bench-permuted 200 $PY -m evaluation.bench --suite encoder --models bert-base --engines eet \
        --budget-s 180 --out-dir "$OUT/permuted"
      probe bench-in-place 200 env EET_HF_PACK_IN_PLACE=1 $PY -m evaluation.bench --suite encoder --models bert-base \
        --engines eet --budget-s 180 --out-dir "$OUT/in-place" ;;
    read-ceiling)
      probe read-ceiling-build 120 nvcc -std=c++17 -O3 -arch=sm_90 -o "$OUT/read_ceiling" scripts/harness_read_ceiling.cu
      probe "$p" 120 "$OUT/read_ceiling"
      rm -f "$OUT/read_ceiling" ;;
    decode-shape-sweep)
      # name:keys_d64:stages_d64:keys_d128:stages_d128[:warps:blocks_per_sm[:loads[:regs]]] (base = the committed
      # defaults; regs 0 / 1 times the binary under EET_HF_DECODE_MMA_REGS=0 / 1)
      SHAPES_DECODE=${DECODE_SHAPES:-"base:16:5:16:3 k32s3:32:3:32:2 k32s2:32:2:16:2 k16s3:16:3:32:3 k16s4:16:4:16:4"}
      for v in $SHAPES_DECODE; do
        IFS=: read -r name k64 s64 k128 s128 warps bps loads _ <<<"$v"
        timeout 200 nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -DEET_DECODE_MMA_KEYS_D64=$k64 \
          -DEET_DECODE_MMA_STAGES_D64=$s64 -DEET_DECODE_MMA_KEYS_D128=$k128 -DEET_DECODE_MMA_STAGES_D128=$s128 \
          -DEET_DECODE_WARPS=${warps:-4} -DEET_DECODE_BLOCKS_PER_SM=${bps:-2} ${loads:+-DEET_DECODE_MMA_LOAD_ONLY} \
          -o "$OUT/decode-$name" scripts/harness_decode.cu csrc/attention_decode.cu csrc/attention_decode_split.cu \
          csrc/attention_decode_mma.cu csrc/attention_decode_mma_regs.cu csrc/attention_decode_combine.cu \
          csrc/cluster_fit.cu csrc/pdl.cu >"$OUT/decode-build-$name.log" 2>&1 &
      done
      wait  # the builds in parallel, the timings one at a time
      for v in $SHAPES_DECODE; do
        IFS=: read -r name _ _ _ _ _ _ loads regs <<<"$v"
        probe "decode-shape-$name" 120 env ${loads:+EET_HARNESS_NO_CHECK=1} ${regs:+EET_HF_DECODE_MMA_REGS=$regs} \
          "$OUT/decode-$name" "$v"
        rm -f "$OUT/decode-$name"
      done ;;
    decode-sass)  # the tensor-core decode kernel's SASS (committed block shape), for instruction counts and order
      probe decode-sass-build 200 nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -Icsrc -cubin \
        -o "$OUT/decode_mma.cubin" csrc/attention_decode_mma.cu
      probe decode-sass 60 cuobjdump -sass "$OUT/decode_mma.cubin"
      rm -f "$OUT/decode_mma.cubin" ;;
    decode-intercept)
      build_decode_harness
      probe decode-default 60 "$OUT/decode-harness" default
      probe decode-noprefetch 60 env EET_HF_DECODE_PREFETCH=0 "$OUT/decode-harness" noprefetch
      probe decode-nopdl 60 env EET_HF_PDL=0 "$OUT/decode-harness" nopdl
      probe decode-cudacore 60 env EET_HF_DECODE_MMA=0 "$OUT/decode-harness" cudacore
      rm -f "$OUT/decode-harness" ;;
    read-paths)
      probe read-paths-build 200 nvcc -std=c++17 -O3 -arch=sm_90 -Iscripts -o "$OUT/read-paths" \
        scripts/harness_read_paths.cu
      probe read-paths 240 "$OUT/read-paths" paths
      probe read-paths-clusters 240 "$OUT/read-paths"
      rm -f "$OUT/read-paths" ;;
    decode-floor)  # the batch-1 decode kernels next to reads of the same bytes with no arithmetic, as a results file
      probe read-paths-build 200 nvcc -std=c++17 -O3 -arch=sm_90 -Iscripts -o "$OUT/read-paths" \
        scripts/harness_read_paths.cu &
      build_decode_harness &
      wait
      probe decode-floor-decode 60 "$OUT/decode-harness" auto
      probe decode-floor-read-paths 240 "$OUT/read-paths"
      probe decode-floor-rows 120 $PY scripts/decode_floor_rows.py --read-paths "$OUT/decode-floor-read-paths.log" \
        --decode "$OUT/decode-floor-decode.log" --results-dir "$OUT" \
        --command "PROBES=decode-floor bash scripts/device_probes.sh (scripts/harness_decode.cu auto, then scripts/harness_read_paths.cu, one device call; rows by scripts/decode_floor_rows.py)"
      rm -f "$OUT/read-paths" "$OUT/decode-harness" ;;
    decode-regs)  # scripts/harness_decode.cu under the default kernel choice and with the register kernel forced off / on
      build_decode_harness
      probe decode-regs-auto 60 "$OUT/decode-harness" auto
      probe decode-regs-off 60 env EET_HF_DECODE_MMA_REGS=0 "$OUT/decode-harness" regs-off
      probe decode-regs-on 60 env EET_HF_DECODE_MMA_REGS=1 "$OUT/decode-harness" regs-on
      rm -f "$OUT/decode-harness" ;;
    decode-ab)
      build_decode_harness "$OUT/decode-ab-base" "${DECODE_AB_BASE:-ab-base/csrc}" &
      build_decode_harness "$OUT/decode-ab-new" csrc &
      wait
      for round in 1 2; do
        probe "decode-ab-base-$round" 60 "$OUT/decode-ab-base" "base$round"
        probe "decode-ab-new-$round" 60 "$OUT/decode-ab-new" "new$round"
      done
      probe decode-ab-new-regs-off 60 env EET_HF_DECODE_MMA_REGS=0 "$OUT/decode-ab-new" new-regs-off
      probe decode-ab-new-regs-on 60 env EET_HF_DECODE_MMA_REGS=1 "$OUT/decode-ab-new" new-regs-on
      rm -f "$OUT/decode-ab-base" "$OUT/decode-ab-new" ;;
    prefill-kernel-bench) probe "$p" 240 $PY -m evaluation.bench_kernels_attention --only prefill --json "$OUT/prefill.json" ;;
    parity-full) probe "$p" 420 $PY -m evaluation.parity --full --out-dir "$OUT/parity" ;;
    *) echo "unknown probe $p" | tee -a "$OUT/probes.txt" ;;
  esac
done
for f in "$OUT"/*.log; do echo "== $(basename "$f"): $(tail -n 2 "$f" | tr '\n' ' ' | cut -c1-300)"; done
cat "$OUT/probes.txt"
