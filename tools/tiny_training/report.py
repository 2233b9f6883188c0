"""Outputs of a training run: the saved models, samples, and TRAINING.md written from the run's report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def save(result: dict, path: Path, dtype: torch.dtype) -> None:
    """save_pretrained in `dtype` (safetensors) + the tokenizer as a PreTrainedTokenizerFast."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*"):
        stale.unlink()
    model = result["model"].to(dtype)
    model.save_pretrained(path)
    result["tokenizer"].save_pretrained(path)


@torch.no_grad()
def samples(result: dict, prompts: list[str], new_tokens: int = 40, sample: bool = False) -> list[str]:
    """Greedy continuations, or (sample=True) seeded top-k 40 / temperature 0.8 samples."""
    model, tok = result["model"].float(), result["tokenizer"]
    torch.manual_seed(0)
    out = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")
        kwargs = {"do_sample": True, "top_k": 40, "temperature": 0.8} if sample else {"do_sample": False}
        gen = model.generate(**ids, max_new_tokens=new_tokens, pad_token_id=tok.eos_token_id, **kwargs)
        out.append(tok.decode(gen[0], skip_special_tokens=True))
    return out


@torch.no_grad()
def fill_mask_samples(result: dict, texts: list[str]) -> list[str]:
    model, tok = result["model"].float(), result["tokenizer"]
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        logits = model(**enc).logits[0]
        pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0]
        top = logits[pos].topk(5).indices.tolist()
        out.append(f"{text} -> {[tok.decode([t]) for t in top]}")
    return out


def mean_tail(losses: list[float], n: int = 50) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail)


def write_training_md(report: dict, path: Path) -> None:
    """TRAINING.md beside the models: how they were made, from this run's report (training_report.json)."""
    a, g, b, m = report["args"], report["gpt2"], report["bert"], report["minutes"]
    ll = report.get("llama")
    fence = "```"

    def row(label: str, gpt2: str, bert: str, llama: str) -> str:
        return f"| {label} | {gpt2} | {bert} |" + (f" {llama} |" if ll else "")

    def heldout(section: dict) -> str:
        return f"{section['heldout_loss']} (ppl {math.exp(section['heldout_loss']):.1f})"

    def causal_samples(name: str, section: dict) -> list[str]:
        return [
            f"{name}, greedy (40 new tokens):",
            "",
            *[f"    {json.dumps(t)}" for t in section["greedy"]],
            "",
            f"{name}, sampled (top-k 40, temperature 0.8, seed 0):",
            "",
            *[f"    {json.dumps(t)}" for t in section["sampled"]],
            "",
        ]

    partial = [
        f"`{run['command']}` trained {families} alone: {run['minutes']} min (torch threads: {run['threads']})."
        for families, run in report.get("partial_runs", {}).items()
    ]
    lines = [
        "# Embedded tiny models: how they were trained",
        "",
        "`gpt2-tiny/` (GPT2LMHeadModel) and `bert-tiny/` (BertForMaskedLM): 4 layers, 4 heads, hidden 256, FFN 1024,",
        "512 positions, about 4.4M parameters each. `llama-tiny/` (LlamaForCausalLM, Llama 3 style): 4 layers,",
        "hidden 256, 4 query heads over 2 key/value heads (GQA, head_dim 64), SiLU-gated MLP of 704, RMSNorm, rotary",
        "(default theta), tied embeddings as Llama-3.2-1B, 512 positions, about 4.0M parameters; its tokenizer starts",
        "every text with `<|begin_of_text|>` and pads (left) with `<|end_of_text|>`. Each model has its own byte-level",
        "BPE vocabulary of 4096. Weights are stored in float16 (`config.json` says `dtype: float16`; load with",
        "`dtype=torch.float32` on CPU). They exist so that the parity and perplexity suites, the tests and",
        "`eet-hf demo` run with no model hub.",
        "",
        "## Command",
        "",
        f"{fence}\n{report['command']}\n{fence}",
        "",
        f"Seed {report['seed']}; Python {report['python']}, torch {report['torch']}, {a['threads']} CPU threads, bf16 autocast.",
        f"Wall time of that command: {m['total']} min (per family in the table below, the first one's includes",
        "reading the corpus), on a 2-core machine that other jobs were sharing; reruns on the same Python and torch",
        "give the same files.",
        *partial,
        "",
        "## Data",
        "",
        "Docstrings (module, class, function) of this Python's standard library .py files, read with `ast` in",
        "sorted path order (test suites, lib2to3 and site-packages skipped), at least 40 characters, de-duplicated,",
        "hard-wrapped prose paragraphs re-flowed onto one line (code, lists and doctests keep their line breaks).",
        f"A seeded shuffle holds out {float(a['heldout_share']):.0%} of them: {report['docstrings']['heldout']} held out",
        f"(`heldout.txt`, blank-line separated, never trained on), {report['docstrings']['train']} for training.",
        "",
        "## Training",
        "",
        f"AdamW (betas 0.9/0.98, weight decay 0.01), {a['tokens_per_step']} tokens per step, linear warmup over 5% of",
        "the steps then cosine decay to 10% of the peak, gradient clipping at 1.0, no dropout. The first",
        f"{1 - float(a['long_share']):.0%} of the steps use short rows (cheaper attention), the rest full 512-token",
        "rows so all 512 positions are trained.",
        "",
        row("", "GPT-2", "BERT", "Llama"),
        row("---", "---", "---", "---"),
        row("steps", a["gpt2_steps"], a["bert_steps"], a.get("llama_steps")),
        row("peak learning rate", a["gpt2_lr"], a["bert_lr"], a.get("llama_lr")),
        row(
            "short rows",
            f"{a['gpt2_short_len']} tokens",
            f"{a['bert_short_len']} tokens ([CLS] ... [SEP])",
            f"{a.get('llama_short_len')} tokens",
        ),
        row(
            "objective",
            "next token",
            f"masked LM, {float(a['mask_rate']):.0%} of tokens (80/10/10 [MASK]/random/kept)",
            "next token (BOS before every document)",
        ),
        row("training tokens (one epoch)", g["train_tokens"], b["train_tokens"], ll and ll["train_tokens"]),
        row(
            "final training loss (last 50 steps)",
            g["final_train_loss"],
            b["final_train_loss"],
            ll and ll["final_train_loss"],
        ),
        row("held-out loss", heldout(g), f"{b['heldout_mlm_loss']} (15% masking)", ll and heldout(ll)),
        row(
            "wall time (min)",
            m["gpt2"],
            m.get("bert", round(m["total"] - m["gpt2"], 2)),
            m.get("llama"),
        ),
        "",
        "## Samples (fp32, after training)",
        "",
        *causal_samples("GPT-2", g),
        *(causal_samples("Llama", ll) if ll else []),
        "BERT, top-5 fill-mask predictions:",
        "",
        *[f"    {t}" for t in b["fill_mask"]],
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
