"""eet_hf: install with `pip install .` (CPU torch must already be present on CPU-only machines).

patches/ and csrc/ live at the top of the repository and are installed inside the package
(eet_hf.patches, eet_hf/csrc) so that adapters import and the JIT build finds its sources from a wheel.
"""

from setuptools import setup

setup(
    name="eet_hf",
    version="0.1.0",
    description="Drop-in accelerator for Hugging Face transformers (EET-style fused CUDA kernels)",
    python_requires=">=3.10",
    packages=["eet_hf", "eet_hf.ops", "eet_hf.patches", "eet_hf.csrc", "eet_hf.models"],
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
