#!/usr/bin/env bash
# Install eet_hf as a user's `pip install .` does and use it: build the wheel, install it into a venv that cannot see
# the editable install, and from outside the checkout import every module, run `eet-hf info` and a short CPU demo.
# The rest of CI imports the checkout (editable install, cwd on sys.path), which hid a wheel without eet_hf.engine
# and eet_hf.encoder (issue 30). About half a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build from a copy of what a clone holds (tracked files and untracked ones git does not ignore): building in the
# checkout would leave build/ behind, and a stale build/lib could put files in the wheel that the tree no longer has.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$work/src"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/eet_hf-*.whl)
echo "built $(basename "$wheel")"

# The venv gets the CI interpreter's site-packages (torch, transformers, ...) as plain sys.path entries through a .pth
# line. Plain entries are not site directories, so their .pth files never run: the editable install's
# __editable__*.pth, which maps eet_hf onto the checkout, stays invisible (the check below asserts it).
"$PY" -m venv "$work/venv"
vpy="$work/venv/bin/python"
"$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
  > "$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_ci_base_site.pth"
"$vpy" -m pip install -q --no-deps --force-reinstall "$wheel"

cd "$work"  # outside the checkout: nothing can come from the source tree
"$vpy" - <<'EOF'
import importlib, pkgutil, sys
from pathlib import Path

import eet_hf

home = Path(eet_hf.__file__).resolve().parent
assert home.is_relative_to(Path(sys.prefix).resolve()), f"eet_hf imported from {home}, not from the venv's wheel"
editable = [f for f in sys.meta_path if "editable" in repr(f).lower()]
assert not editable, f"the editable install is visible in the venv: {editable}"

def fail(name):
    raise ImportError(f"cannot import {name} from the installed wheel")

names = [m.name for m in pkgutil.walk_packages(eet_hf.__path__, "eet_hf.", onerror=fail)]
for name in names:
    importlib.import_module(name)
for required in ("eet_hf.patches", "eet_hf.engine", "eet_hf.encoder", "eet_hf.ops", "eet_hf.models"):
    assert required in names, f"{required} is not in the wheel"

from eet_hf.models import default_model_path
from eet_hf.ops._build import csrc_dir

kernels = sorted(p.name for p in csrc_dir().iterdir())
assert csrc_dir().is_relative_to(home) and "bindings.cpp" in kernels, f"csrc missing from the wheel: {csrc_dir()}"
for family in ("gpt2", "bert"):
    assert (default_model_path(family) / "model.safetensors").is_file(), f"embedded {family} model missing"
print(f"wheel: imported {len(names)} modules from {home}; {len(kernels)} kernel sources; embedded models present")
EOF
"$work/venv/bin/eet-hf" --version
"$work/venv/bin/eet-hf" info
"$work/venv/bin/eet-hf" demo --device cpu --max-new-tokens 4
