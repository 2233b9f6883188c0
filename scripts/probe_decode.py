"""Quick decode timing on one GPU (developer probe, not the benchmark): HF sdpa vs eet for GPT-2 configs, fp16,
prompt 128; decode ms/token = (t(new=N) - t(new=1)) / (N - 1), medians of 3. Usage: python scripts/probe_decode.py gpt2 1"""

import copy
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import eet_hf

SHAPES = {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-xl": (1600, 48, 25)}


def timed(model, ids, new):
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    name, batch = sys.argv[1], int(sys.argv[2])
    n_embd, n_layer, n_head = SHAPES[name]
    config = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    hf = GPT2LMHeadModel(config).to("cuda", torch.float16).eval()
    hf.set_attn_implementation("sdpa")
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids = torch.randint(0, 50000, (batch, 128), device="cuda")
    for label, m in (("hf-sdpa", hf), ("eet", model)):
        t0 = time.perf_counter()
        timed(m, ids, 4)
        warm = time.perf_counter() - t0
        t1 = statistics.median(timed(m, ids, 1) for _ in range(3))
        tn = statistics.median(timed(m, ids, 128) for _ in range(3))
        print(f"{name} bs{batch} {label:8s} prefill {t1 * 1e3:7.2f} ms  decode {(tn - t1) / 127 * 1e3:6.3f} ms/token"
              f"  first call {warm:5.2f} s", flush=True)
    print(eet_hf.engine.generate.memory_report(model), model.__dict__["_eet_decode_engine"].engine.stats)


if __name__ == "__main__":
    main()
