"""The optimisation loop shared by both families: AdamW, warmup + cosine schedule, held-out loss."""

from __future__ import annotations

import math
import time

import torch


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_loop(model, batches, steps: int, peak_lr: float, log_name: str) -> list[float]:
    """AdamW with bf16 autocast on CPU; `batches(step)` returns the model kwargs. Returns the loss per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, warmup=max(1, steps // 20))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batches(step)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"[{log_name}] step {step:4d}/{steps} loss {recent:.3f} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    return losses


@torch.no_grad()
def eval_loss(model, rows: torch.Tensor, make_kwargs, batch: int = 8) -> float:
    """Mean loss over held-out rows ([n, length]), fp32, no dropout."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        loss = model(**make_kwargs(rows[i : i + batch])).loss
        total += loss.item() * len(rows[i : i + batch])
        count += len(rows[i : i + batch])
    return total / max(1, count)
