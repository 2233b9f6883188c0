#!/usr/bin/env bash
# Make `datasets` importable on the GPU image, which has no network: install, from the wheels carried in
# .gpu_wheels/eval-wheels.tar.xz (built by tools/gpu_wheels.sh), only the distributions that are missing or
# outside the versions datasets 5.2.0 accepts. They go to .gpu_site/ (pip --target), not into the image's
# site-packages: nothing the image has is replaced, no root or PEP 668 override is needed, and the folder stays
# on the warm machine between calls. Put it on the path with the line this script prints last (run.sh does).
#   bash tests/gpu/install_wheels.sh      # exit 0: datasets loads the held-out text; 1: it still cannot
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
BUNDLE=${EET_WHEELS:-$PWD/.gpu_wheels/eval-wheels.tar.xz}
SITE=${EET_GPU_SITE:-$PWD/.gpu_site}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# What the perplexity suite does with datasets, on the embedded held-out file.
SMOKE='from datasets import load_dataset
ds = load_dataset("text", data_files="eet_hf/models/heldout.txt", split="train")
import datasets, pyarrow
print(f"datasets {datasets.__version__} (pyarrow {pyarrow.__version__}) loads the held-out text: {len(ds)} lines")'

with_site() { PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$@"; }

if with_site "$PY" -c "$SMOKE" 2>/dev/null; then
  echo "export PYTHONPATH=$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
  exit 0
fi
if [ ! -f "$BUNDLE" ]; then
  echo "install_wheels: datasets does not load and $BUNDLE is missing (build it with tools/gpu_wheels.sh and carry .gpu_wheels)" >&2
  exit 1
fi

# "import name | distribution | accepted versions" (datasets 5.2.0's requirements); the image's own copy is kept
# whenever it imports and its version is accepted.
needed=$("$PY" - <<'PYEOF'
import importlib
import importlib.metadata as md

from packaging.specifiers import SpecifierSet

REQUIRED = [
    ("datasets", "datasets", ">=5.2.0"),
    ("pyarrow", "pyarrow", ">=24.0.0"),
    ("pandas", "pandas", ""),
    ("dill", "dill", ">=0.3.0,<0.4.2"),
    ("multiprocess", "multiprocess", "<0.70.20"),
    ("xxhash", "xxhash", ""),
    ("fsspec", "fsspec", ">=2023.1.0,<=2026.9.0"),
    ("dateutil", "python-dateutil", ">=2.8.2"),
    ("six", "six", ""),
    ("tqdm", "tqdm", ">=4.66.3"),
    ("filelock", "filelock", ""),
    ("yaml", "pyyaml", ">=5.1"),
]
for module, dist, spec in REQUIRED:
    try:
        importlib.import_module(module)
        ok = md.version(dist) in SpecifierSet(spec, prereleases=True)
    except Exception:  # noqa: BLE001 - missing, broken or unversioned: install ours
        ok = False
    if not ok:
        print(dist)
PYEOF
)
echo "install_wheels: installing into $SITE: $(echo $needed)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Python's tarfile (lzma is in the standard library): the image need not have the xz program.
"$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$BUNDLE" "$work"
rm -rf "$SITE"
# shellcheck disable=SC2086 # one distribution name per word
"$PY" -m pip install --quiet --no-index --find-links "$work" --no-deps --target "$SITE" $needed
if ! with_site "$PY" -c "$SMOKE"; then
  echo "install_wheels: datasets still does not load (see the error above)" >&2
  exit 1
fi
echo "export PYTHONPATH=$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
