#!/usr/bin/env bash
# Build .gpu_wheels/eval-wheels.tar.xz: the perplexity suite's `datasets` and its dependencies as wheels for the
# GPU image (CPython 3.12, manylinux x86_64), which has no network. tests/gpu/install_wheels.sh installs from it.
#
# Why a tar.xz of uncompressed wheels: the device tool carries at most 64 MiB per call, and pyarrow alone is
# 47 MiB as a (deflated) wheel; stored (zip without compression) and xz'd, the whole set is about 35 MiB, so it
# travels in the same call as the built extension. A stored wheel is still a valid wheel (RECORD hashes the files,
# not the archive), so pip installs it unchanged.
#
# Left out on purpose, because the image has them and replacing them would change what is measured: torch, numpy,
# huggingface_hub (and its hf_xet, httpx), transformers.
#
# Usage: bash tools/gpu_wheels.sh [DEST]    # default DEST .gpu_wheels; needs network here; about 3 minutes (xz)
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,/^# Usage/p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
DEST=${1:-.gpu_wheels}
PY=${PYTHON:-python3}
# datasets 5.2.0 accepts huggingface_hub >= 1.31 (the image has 1.33) and needs pyarrow >= 24: the oldest allowed
# pyarrow is also the smallest wheel. Pins keep the set reproducible; keep them in step with install_wheels.sh.
PACKAGES=(
  datasets==5.2.0 pyarrow==24.0.0 pandas==3.1.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
  fsspec==2026.9.0 python-dateutil==2.9.0.post0 six==1.17.0 tzdata==2026.6 tqdm==4.70.1 filelock==4.3.1
  pyyaml==6.0.4 packaging==26.4
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$work/deflated" "${PACKAGES[@]}"
"$PY" - "$work/deflated" "$work/stored" <<'PYEOF'
"""Rewrite every wheel as a stored (uncompressed) zip with the same members, so xz can compress across them."""
import sys
import zipfile
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir()
for wheel in sorted(src.glob("*.whl")):
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(dst / wheel.name, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)
PYEOF
mkdir -p "$DEST"
tar -C "$work/stored" -cf - . | xz -9 -T0 >"$DEST/eval-wheels.tar.xz.part"
mv "$DEST/eval-wheels.tar.xz.part" "$DEST/eval-wheels.tar.xz"
ls "$work/stored" >"$DEST/eval-wheels.txt"
echo "wrote $DEST/eval-wheels.tar.xz ($(du -m "$DEST/eval-wheels.tar.xz" | cut -f1) MiB): $(tr '\n' ' ' <"$DEST/eval-wheels.txt")"
