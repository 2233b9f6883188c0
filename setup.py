"""eet_hf: install with `pip install .` (CPU torch must already be present on CPU-only machines).

patches/ and csrc/ live at the top of the repository and are installed inside the package
(eet_hf.patches, eet_hf/csrc) so that adapters import and the JIT build finds its sources from a wheel.
Packages are discovered, not listed: a hand-kept list once left eet_hf.engine and eet_hf.encoder out of the wheel
(tests/test_install.py checks that every source directory and data file is covered).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _version() -> str:
    """eet_hf.__version__, read as text: importing eet_hf here would need torch at build time."""
    text = (ROOT / "eet_hf" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("setup.py: no `__version__ = \"...\"` line in eet_hf/__init__.py")
    return match.group(1)


def _packages() -> list[str]:
    """eet_hf and every subpackage, patches/ (and any subpackage) as eet_hf.patches, csrc/ as eet_hf.csrc."""
    inner = [f"eet_hf.{name}" for name in find_packages(str(ROOT / "eet_hf"))]
    patches = [f"eet_hf.patches.{name}" for name in find_packages(str(ROOT / "patches"))]
    return ["eet_hf", *inner, "eet_hf.patches", *patches, "eet_hf.csrc"]


setup(
    name="eet_hf",
    version=_version(),
    description="Drop-in accelerator for Hugging Face transformers (EET-style fused CUDA kernels)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license_expression="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: GPU :: NVIDIA CUDA",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.10",
    packages=_packages(),
    package_dir={"eet_hf": "eet_hf", "eet_hf.patches": "patches", "eet_hf.csrc": "csrc"},
    package_data={
        "eet_hf.csrc": ["*.cu", "*.cuh", "*.h", "*.cpp"],
        # TRAINING.md, training_report.json and heldout.txt beside the models, then each model's own files.
        "eet_hf.models": ["*.md", "*.json", "*.txt", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.md"],
    },
    install_requires=["torch>=2.5", "transformers>=5.17", "ninja", "packaging"],
    extras_require={"eval": ["datasets", "accelerate", "matplotlib", "tokenizers"], "test": ["pytest", "ruff"]},
    entry_points={"console_scripts": ["eet-hf=eet_hf.cli:main"]},
)
