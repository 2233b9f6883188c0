"""Suite `multi-gpu` (issue #9): GPT-2-style models split over N GPUs by eet's tensor parallelism.

One process per GPU, launched with torchrun; every rank runs the same calls on the same inputs and rank 0 writes
`multi-gpu-<device>.json/.md` (evaluation/results_io format; --merge keeps the rows of other N):

    torchrun --nproc-per-node 1 -m evaluation.multi_gpu --out-dir $OUT            # N=1: eet's single-GPU path
    torchrun --nproc-per-node 2 -m evaluation.multi_gpu --out-dir $OUT --merge
    torchrun --nproc-per-node 4 -m evaluation.multi_gpu --out-dir $OUT --merge
    python -m torch.distributed.run --nproc-per-node 2 -m evaluation.multi_gpu --device cpu --quick --out-dir /tmp/m

Models (random weights from the config, fp16 on GPUs): gpt2-xl (48 x 1600, 25 heads: cannot be split over 2 or 4
ranks, which is recorded as an error row with eet's message) and gpt-13b (GPT-3 13B's shape as OPT-13B has it:
40 x 5120, 40 heads, 12.9B parameters). Per N and batch (1, 8): greedy generate, prompt 128, 128 new tokens
forced; tokens_per_s = batch * new / generate time; decode_ms_per_token = (t(new) - t(new=1)) / (new - 1); the
slowest rank's median. With N > 1, parity first: the unsplit accelerated model's logits and greedy tokens against
the split one's, on every rank (rows max_abs_dlogit, greedy_match_share, ranks_agree).
Under tensor parallelism generate runs HF's loop on eet's fused forward (eet's decode loop is single-device).
NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1), set before NCCL starts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import GPT2LMHeadModel

import eet_hf
from eet_hf import distributed as eet_distributed

from .bench import shapes as S
from .bench.output import error_row, write_suite
from .bench.timing import median_ms
from .results_io import RESULTS_DIR, make_row

SUITE = "multi-gpu"
HEADLINE = ["tokens_per_s", "decode_ms_per_token", "prefill_ms", "max_abs_dlogit", "greedy_match_share"]
MODELS = {"gpt2-xl": lambda: S.gpt2_config(48, 1600, 25), "gpt-13b": lambda: S.gpt2_config(40, 5120, 40, 2048)}
# --quick: the same shapes in miniature; 5 heads (like gpt2-xl's 25) cannot be split over 2 ranks.
LENGTHS = {False: (128, 128), True: (8, 4)}  # (prompt, new tokens), by --quick
QUICK_MODELS = {"gpt2-xl-tiny": lambda: S.gpt2_config(2, 80, 5, 64, 512),
                "gpt-13b-tiny": lambda: S.gpt2_config(2, 128, 8, 64, 512)}


def multicast_off() -> None:
    """NVLink SHARP multicast off for NCCL and torch's symmetric memory: before any communicator exists."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"


def init(device_kind: str) -> torch.device:
    """Join the torchrun group (or make a one-process one without torchrun); this rank's device."""
    if "RANK" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cpu")
    if device_kind == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"multi_gpu: local rank {local_rank} has no GPU (this machine has "
                             f"{torch.cuda.device_count()}); use --nproc-per-node <= the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # A rank that fails inside a collective leaves the others waiting: bound that wait.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=300),
                            device_id=device if device.type == "cuda" else None)
    return device


def build(make_config, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Seeded random weights filled on the device: the same values on every rank. LayerNorms start as HF
    initialises them (weight 1, bias 0), so activations keep their scale through the layers and the logits are
    not all near zero (greedy parity on near-flat logits would compare noise)."""
    model = S.build_empty(GPT2LMHeadModel, make_config(), str(device), dtype)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model


def across_ranks(value: float, op=dist.ReduceOp.MAX) -> float:
    """This value reduced over all ranks: MAX for times (a step is as slow as its slowest rank), MIN for shares."""
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return float(t.item())


def same_on_all_ranks(tensor: torch.Tensor) -> bool:
    mine = tensor.double().sum().reshape(1).cpu()
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low == high)


def _ids(vocab: int, batch: int, prompt: int, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, min(vocab, 50000), (batch, prompt), generator=generator).to(device)


def parity(model, group, name: str, world: int, device: torch.device, quick: bool) -> list[dict]:
    """Accelerate unsplit, record logits and greedy tokens, then split the same model over `group` and compare."""
    batch, prompt, new = (2, 8, 4) if quick else (4, 32, 16)
    ids = _ids(model.config.vocab_size, batch, prompt, device, seed=1)
    mask = torch.ones_like(ids)
    mask[1:, : prompt // 2] = 0  # left padding on all but the first row
    kwargs = dict(attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        eet_hf.accelerate(model)
        want_logits, want_tokens = model(ids, attention_mask=mask).logits, model.generate(ids, **kwargs)
        eet_hf.accelerate(model, tensor_parallel=group)  # re-applies eet on the split weights
        got_logits, got_tokens = model(ids, attention_mask=mask).logits, model.generate(ids, **kwargs)
    real = mask.bool()
    dlogit = across_ranks((got_logits.double() - want_logits.double())[real].abs().max().item())
    match = (got_tokens == want_tokens).all(-1).double().mean().item()
    agree = same_on_all_ranks(got_tokens) and same_on_all_ranks(got_logits)
    case = f"{name}/tp{world}/parity/bs{batch}/prompt{prompt}/new{new}"
    return [make_row(case, "eet", "max_abs_dlogit", dlogit, "logit", gpus=world),
            make_row(case, "eet", "greedy_match_share", across_ranks(match, dist.ReduceOp.MIN), "share", gpus=world),
            make_row(case, "eet", "ranks_agree", float(agree), "bool", gpus=world)]


def speed(model, name: str, world: int, batch: int, device: torch.device, quick: bool, repeats: int) -> list[dict]:
    prompt, new = LENGTHS[quick]
    ids = _ids(model.config.vocab_size, batch, prompt, device, seed=batch)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(tokens: int):
        return lambda: model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        run(new)()  # warm-up: kernels, graphs, allocator
        full = across_ranks(median_ms(run(new), device.type, repeats))
        prefill = across_ranks(median_ms(run(1), device.type, repeats, warmup=1))
    case = f"{name}/tp{world}/bs{batch}/prompt{prompt}/new{new}"
    rows = [make_row(case, "eet", "tokens_per_s", batch * new / (full / 1e3), "tokens/s", gpus=world),
            make_row(case, "eet", "decode_ms_per_token", (full - prefill) / (new - 1), "ms", gpus=world),
            make_row(case, "eet", "prefill_ms", prefill, "ms", gpus=world),
            make_row(case, "eet", "generate_ms", full, "ms", gpus=world)]
    if device.type == "cuda":
        rows.append(make_row(case, "eet", "peak_gib", across_ranks(torch.cuda.max_memory_allocated(device) / 2**30),
                             "GiB", gpus=world))
    return rows


def one_model(name: str, make_config, args, device: torch.device, notes: list[str]) -> list[dict]:
    world, group = dist.get_world_size(), dist.group.WORLD
    dtype = torch.float32 if args.quick else torch.float16
    model = build(make_config, device, dtype)
    rows: list[dict] = []
    try:
        if world > 1:
            eet_distributed.check(model, group)  # the same refusal on every rank, before any collective
            rows += parity(model, group, name, world, device, args.quick)
        else:
            eet_hf.accelerate(model)
        report = eet_hf.explain(model)
        notes.append(f"{name} tp{world}: kernels={report.kernels}; generate: "
                     f"{report.fallbacks.get('generate', 'eet decode loop')}")
        for batch in args.batches:
            rows += speed(model, name, world, batch, device, args.quick, args.repeats)
    except eet_hf.EetUnsupportedError as error:  # raised alike on every rank (configuration, not data)
        prompt, new = LENGTHS[args.quick]
        rows += [error_row(f"{name}/tp{world}/bs{b}/prompt{prompt}/new{new}", "eet", error) for b in args.batches]
    return rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m evaluation.multi_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny configs, fp32, short prompts (CPU check)")
    parser.add_argument("--models", default=None, help="comma-separated subset of the models")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 with --quick)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--merge", action="store_true", help="keep earlier rows of other (case, engine) pairs")
    args = parser.parse_args(argv)
    known = QUICK_MODELS if args.quick else MODELS
    names = args.models.split(",") if args.models else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known{' with --quick' if args.quick else ''}: {', '.join(known)}")
    args.models = {n: known[n] for n in names}
    args.batches = [int(b) for b in args.batches.split(",")]
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs CUDA GPUs; --device cpu --quick is the CPU check")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    multicast_off()
    device = init(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # several ranks share the CPU cores
    notes: list[str] = []
    rows = [row for name, make in args.models.items() for row in one_model(name, make, args, device, notes)]
    if dist.get_rank() == 0:
        command = f"torchrun --nproc-per-node {dist.get_world_size()} -m evaluation.multi_gpu " + " ".join(
            shlex.quote(a) for a in argv)
        notes.append("NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1; random weights (LayerNorms 1/0); "
                     "times: the slowest rank's median of the timed repeats")
        notes.append("parity: the same model accelerated unsplit on each rank (its greedy tokens from eet's decode "
                     "loop) against the split one (HF's loop on eet's forward); ranks_agree: identical logits and "
                     "tokens on every rank")
        path = write_suite(SUITE, rows, command, args.out_dir, HEADLINE, notes, merge=args.merge)
        print(f"multi-gpu: {len(rows)} rows -> {path}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
