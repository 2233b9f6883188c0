"""`eet-hf` command line: `demo` (greedy generation, plain HF vs eet) and `info` (environment, build cache).

    eet-hf demo [--model PATH] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--prompt TEXT] [--max-new-tokens N]
    eet-hf info
Also runnable as `python -m eet_hf.cli`.
"""

# torch and transformers are imported inside the commands, after the arguments are parsed: importing them takes
# seconds, which `eet-hf --help` and a mistyped option should not cost (tests/test_cli.py checks it).

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import eet_hf  # cheap: the public API loads on first use

if TYPE_CHECKING:
    import torch

DTYPES = ("bf16", "fp16", "fp32")


class CliError(Exception):
    """Bad input or a machine that cannot run the command: printed as one line, exit status 2, no traceback."""


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    out = _run([nvcc, "--version"]) if nvcc else None
    if not out:
        return None
    release = [line for line in out.splitlines() if "release" in line]
    return f"{(release or out.splitlines())[-1].strip()} ({nvcc})"


def info(_: argparse.Namespace) -> int:
    import torch
    import transformers

    from eet_hf.ops import build_info

    print(f"eet_hf        {eet_hf.__version__} ({Path(eet_hf.__file__).resolve().parent})")
    print(f"python        {platform.python_version()} ({sys.executable})")
    print(f"torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"transformers  {transformers.__version__}")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        print(f"gpu           {torch.cuda.get_device_name()} (sm_{major}{minor}, driver {driver or 'unknown'})")
    else:
        print("gpu           none (eet runs its reference PyTorch ops)")
    print(f"nvcc          {_nvcc_version() or 'not found'}")
    print("build cache")
    for key, value in build_info().items():
        print(f"  {key:<16}{value}")
    return 0


def _generate(model, enc, new_tokens: int, pad_id: int, device: str) -> tuple[torch.Tensor, float]:
    """Greedy continuation ids and wall seconds (after a 2-token warm-up: kernel builds, allocator, caches)."""
    import torch

    model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=pad_id)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    if device == "cuda":
        torch.cuda.synchronize()
    return out[0, enc["input_ids"].shape[1] :], time.perf_counter() - started


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _load(path: Path, dtype: torch.dtype, device: str):
    """Tokenizer and causal LM from `path`, or a CliError naming the path and HF's reason."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)  # first: its error names the missing file
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:  # what HF raises for a directory that is not a causal LM
        raise CliError(f"--model {path}: not a loadable Hugging Face causal LM ({_first_line(error)})") from None
    return tokenizer, model.to(device).eval()


def demo(args: argparse.Namespace) -> int:
    # Checked before importing torch: a wrong path answers at once.
    if args.model is not None and not args.model.is_dir():
        raise CliError(f"--model {args.model}: no such directory (expected a local Hugging Face causal LM)")
    import torch
    from transformers.utils import logging as hf_logging

    from eet_hf.models import default_model_path

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device cuda: no CUDA device is available here (torch {torch.__version__}, "
                       f"built with CUDA {torch.version.cuda or 'none'}); run without --device or with --device cpu")
    hf_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("fp16" if device == "cuda" else "fp32")
    path = args.model or default_model_path("gpt2")
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    tokenizer, model = _load(path, torch_dtype, device)
    enc = tokenizer(args.prompt, return_tensors="pt").to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    print(f"model {path} ({model.config.model_type}, {dtype}, {device}); prompt {args.prompt!r}")
    if device != "cuda":
        print(f"on {device} eet runs its PyTorch reference ops: this demo shows that eet gives HF's answers; "
              "the speed-up needs a CUDA GPU")

    hf_ids, hf_s = _generate(model, enc, args.max_new_tokens, pad_id, device)
    eet_hf.accelerate(model)  # in place, after the HF run: one copy of the weights in memory
    report = eet_hf.explain(model)
    eet_ids, eet_s = _generate(model, enc, args.max_new_tokens, pad_id, device)

    print(f"\n[HF]  {tokenizer.decode(hf_ids, skip_special_tokens=True)!r}")
    print(f"[eet] {tokenizer.decode(eet_ids, skip_special_tokens=True)!r}")
    print(
        f"\neet: {len(report.accelerated)} modules accelerated, {len(report.fallbacks)} fallbacks ({report.kernels} ops)"
    )
    print(f"match: {'yes' if torch.equal(hf_ids, eet_ids) else 'no'}")
    for name, ids, secs in (("HF", hf_ids, hf_s), ("eet", eet_ids, eet_s)):
        print(f"time {name:<4} {secs * 1000:8.1f} ms for {len(ids)} tokens ({len(ids) / secs:.1f} tokens/s)")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eet-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"eet-hf {eet_hf.__version__}")
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="greedy generation with plain HF, then with eet; compare")
    p_demo.add_argument("--model", type=Path, help="local HF GPT-2 directory (default: the embedded tiny GPT-2)")
    p_demo.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p_demo.add_argument("--dtype", choices=DTYPES, help="default: fp16 on cuda, fp32 on cpu")
    p_demo.add_argument("--prompt", default="Read the contents of")
    p_demo.add_argument("--max-new-tokens", type=_positive_int, default=48)
    p_demo.set_defaults(func=demo)
    sub.add_parser("info", help="versions, GPU, nvcc and the CUDA build cache").set_defaults(func=info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CliError as error:
        print(f"eet-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
