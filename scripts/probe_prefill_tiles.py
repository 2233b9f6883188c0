"""Developer probe: eet's head_dim-128 prefill kernel under each tile shape (EET_HF_PREFILL_TILE_D128, read per
call), next to torch's SDPA backends on the same tensors, timed as evaluation/bench_kernels_attention.py times
prefill (CUDA-graph replays, median). Correctness of each tile is the GPU test suite's job (run it per tile); this
script only checks each tile's output against the default tile's before timing it.

    python scripts/probe_prefill_tiles.py
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from evaluation.bench_kernels_attention import _bounds, _mask, _sdpa_backends, _time_ms

TILES = ("2x32", "2x64", "1x32", "1x64")
# (batch, heads, seq, padding, causal, dtype)
SHAPES = [
    (2, 32, 512, "none", True, torch.float16),
    (2, 32, 512, "left", True, torch.float16),
    (2, 32, 512, "left", True, torch.bfloat16),
    (2, 32, 2048, "none", True, torch.float16),
    (2, 32, 2048, "left", True, torch.float16),
    (8, 32, 512, "left", True, torch.float16),
    (4, 16, 1024, "right", False, torch.float16),
    (1, 32, 4096, "none", True, torch.float16),
]


def main() -> None:
    import eet_hf.ops as ops

    assert ops.ensure_loaded(), ops.build_info()
    print(f"{'shape':<34} " + " ".join(f"{t:>8}" for t in TILES) + "   flash    effic    cudnn   (us)")
    with torch.inference_mode():
        for batch, heads, seq, padding, causal, dtype in SHAPES:
            torch.manual_seed(seq + batch)
            q, k, v = (
                torch.randn(batch, seq, heads, 128, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(3)
            )
            ks, ke, qo = _bounds(batch, seq, seq, padding, "cuda")
            scale = 128**-0.5
            name = f"bs{batch} h{heads} L{seq} {padding} {'causal' if causal else 'full'} {str(dtype)[6:]}"
            times = []
            os.environ.pop("EET_HF_PREFILL_TILE_D128", None)
            ref = ops.attention(q, k, v, ks, ke, qo, causal, scale).float()
            for tile in TILES:
                os.environ["EET_HF_PREFILL_TILE_D128"] = tile
                out = ops.attention(q, k, v, ks, ke, qo, causal, scale).float()
                err = (out - ref).abs().max().item()
                if not err < 2e-2 or not torch.isfinite(out).all():
                    raise SystemExit(f"{name} tile {tile}: max |diff| vs 2x32 = {err}")
                times.append(_time_ms(lambda i: ops.attention(q, k, v, ks, ke, qo, causal, scale)) * 1e3)
            os.environ.pop("EET_HF_PREFILL_TILE_D128", None)
            mask = _mask(ks, ke, qo, causal, seq, seq) if padding != "none" else None
            torch_times = []
            for backend_name, backend, sdpa_kernel in _sdpa_backends():
                if backend_name == "torch-sdpa-math":
                    continue

                def sdpa(i, backend=backend, sdpa_kernel=sdpa_kernel):
                    with sdpa_kernel(backend):
                        F.scaled_dot_product_attention(
                            q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale
                        )

                try:
                    torch_times.append(f"{_time_ms(sdpa) * 1e3:8.1f}")
                except Exception:  # noqa: BLE001 - backend refuses the shape or the mask
                    torch.cuda.synchronize()
                    torch_times.append(f"{'-':>8}")
            print(f"{name:<34} " + " ".join(f"{t:8.1f}" for t in times) + " " + " ".join(torch_times), flush=True)


if __name__ == "__main__":
    main()
