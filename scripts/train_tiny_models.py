"""Train the embedded default models (eet_hf/models/): a tiny GPT-2 (causal LM) and a tiny BERT (masked LM).

Data: the docstrings of this Python's standard library, read from its .py files with `ast` (no network).
Files are walked in sorted order, docstrings de-duplicated, then split 95/5 with a seeded shuffle; the 5%
goes to eet_hf/models/heldout.txt for the perplexity suite. Each family gets its own byte-level BPE tokenizer.

Everything is seeded and single-process, so a rerun on the same Python/torch/CPU gives the same files.
Budget: about 12 minutes on 2 CPU cores (bf16 autocast on CPU roughly doubles the training speed).

    python scripts/train_tiny_models.py            # writes eet_hf/models/{gpt2-tiny,bert-tiny,heldout.txt}
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "eet_hf" / "models"
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "lib2to3"}  # test suites are code, not prose
EOS = "<|endoftext|>"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def collect_docstrings(min_chars: int = 40) -> list[str]:
    """Module/class/function docstrings of the stdlib .py files, in sorted-path order, de-duplicated."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts))
    docs: list[str] = []
    seen: set[str] = set()
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= min_chars:
                    doc = unwrap(doc)
                    if doc not in seen:
                        seen.add(doc)
                        docs.append(doc)
    return docs


def unwrap(doc: str) -> str:
    """Re-flow hard-wrapped prose paragraphs onto one line; paragraphs with indented, bulleted or doctest
    lines (code, tables, lists) keep their line breaks. Fewer newline tokens -> more prose per token."""
    paras = []
    for para in doc.split("\n\n"):
        lines = para.split("\n")
        plain = all(
            line and not line[0].isspace() and not line.startswith((">>>", "...", "-", "*", "|", "+", ":"))
            for line in lines
        )
        paras.append(" ".join(line.strip() for line in lines) if plain else para)
    return "\n\n".join(paras)


def split(docs: list[str], heldout_share: float, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_held = int(len(docs) * heldout_share)
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [docs[i] for i in train], [docs[i] for i in held]


def train_bpe(docs: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    """Byte-level BPE (as GPT-2/RoBERTa): no unknown bytes, so any text round-trips."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def gpt2_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_bpe(docs, vocab_size, [EOS])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # GPT-2 has no pad token: pad with EOS, on the left so batched generation continues the real text.
    # token_type_ids must not be returned: GPT-2 would add their (untrained) embeddings to the input.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=512,
    )


def bert_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_bpe(docs, vocab_size, BERT_SPECIALS)
    # lstrip: in "The [MASK] is" the mask absorbs the space before it, as the masked word's token would (RoBERTa).
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True)])
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="[CLS] $A [SEP]",
                pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        padding_side="right",
        model_max_length=512,
    )


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def token_stream(tokenizer, docs: list[str], separator: int) -> list[int]:
    """All docs as one token list, `separator` after each (no CLS/SEP template: rows are packed later)."""
    stream: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
        stream += enc.ids + [separator]
    return stream


def pack(ids: list[int], length: int) -> torch.Tensor:
    """Cut one token stream into [n, length] rows (the ragged tail is dropped)."""
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


def phased_batches(
    short_rows: torch.Tensor, long_rows: torch.Tensor, steps: int, long_share: float, tokens_per_step: int, seed: int
):
    """step -> [batch, len] rows: short rows for the first (1 - long_share) of the steps (cheap attention, more
    updates per minute), then full-length rows so every position embedding up to 512 gets trained."""
    gen = torch.Generator().manual_seed(seed)
    orders = {id(r): torch.randperm(len(r), generator=gen).tolist() for r in (short_rows, long_rows)}
    cursor = {id(short_rows): 0, id(long_rows): 0}
    first_long = int(steps * (1 - long_share))

    def batch(step: int) -> torch.Tensor:
        rows = short_rows if step < first_long else long_rows
        n = max(1, tokens_per_step // rows.shape[1])
        order, start = orders[id(rows)], cursor[id(rows)]
        cursor[id(rows)] = start + n
        return rows[[order[(start + j) % len(order)] for j in range(n)]]

    return batch


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


def train_gpt2(train_docs, held_docs, args) -> dict:
    tokenizer = gpt2_tokenizer(train_docs, args.vocab_size)
    eos_id = tokenizer.eos_token_id
    stream = token_stream(tokenizer, train_docs, eos_id)
    held_rows = pack(token_stream(tokenizer, held_docs, eos_id), 512)
    print(f"[gpt2] {len(stream)} training tokens, {held_rows.numel()} held-out tokens")

    torch.manual_seed(args.seed)
    # No dropout: a few epochs of a small corpus in minutes; underfitting, not overfitting, is the risk.
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=256,
        n_layer=4,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model = GPT2LMHeadModel(config)
    rows = phased_batches(
        pack(stream, args.gpt2_short_len),
        pack(stream, 512),
        args.gpt2_steps,
        args.long_share,
        args.tokens_per_step,
        args.seed,
    )

    def batches(step: int) -> dict:
        x = rows(step)
        return {"input_ids": x, "labels": x}

    losses = train_loop(model, batches, args.gpt2_steps, args.gpt2_lr, "gpt2")
    held = eval_loss(model, held_rows, lambda x: {"input_ids": x, "labels": x})
    model.generation_config.pad_token_id = eos_id
    return {"model": model, "tokenizer": tokenizer, "losses": losses, "heldout_loss": held, "tokens": len(stream)}


def mask_tokens(
    x: torch.Tensor, tokenizer, gen: torch.Generator, rate: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `rate` of the non-special tokens; 80% -> [MASK], 10% -> random token, 10% kept."""
    special = torch.tensor(tokenizer.all_special_ids)
    labels = x.clone()
    candidates = ~torch.isin(x, special)
    picked = (torch.rand(x.shape, generator=gen) < rate) & candidates
    labels[~picked] = -100
    inputs = x.clone()
    roll = torch.rand(x.shape, generator=gen)
    inputs[picked & (roll < 0.8)] = tokenizer.mask_token_id
    rand_pos = picked & (roll >= 0.8) & (roll < 0.9)
    # Random replacements never draw a special token (ids 0..4), so no stray [PAD]/[CLS] inside a row.
    low = max(tokenizer.all_special_ids) + 1
    inputs[rand_pos] = torch.randint(low, len(tokenizer), x.shape, generator=gen)[rand_pos]
    return inputs, labels


def train_bert(train_docs, held_docs, args) -> dict:
    tokenizer = bert_tokenizer(train_docs, args.vocab_size)
    stream = token_stream(tokenizer, train_docs, tokenizer.sep_token_id)

    def rows_of(ids: list[int], length: int) -> torch.Tensor:
        """[CLS] + length-2 packed tokens + [SEP] per row."""
        body = pack(ids, length - 2)
        cls = torch.full((len(body), 1), tokenizer.cls_token_id)
        sep = torch.full((len(body), 1), tokenizer.sep_token_id)
        return torch.cat([cls, body, sep], dim=1)

    held_rows = rows_of(token_stream(tokenizer, held_docs, tokenizer.sep_token_id), 512)
    print(f"[bert] {len(stream)} training tokens, {held_rows.numel()} held-out tokens")

    torch.manual_seed(args.seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForMaskedLM(config)
    rows = phased_batches(
        rows_of(stream, args.bert_short_len),
        rows_of(stream, 512),
        args.bert_steps,
        args.long_share,
        args.tokens_per_step,
        args.seed + 1,
    )
    gen = torch.Generator().manual_seed(args.seed + 2)

    def batches(step: int) -> dict:
        inputs, labels = mask_tokens(rows(step), tokenizer, gen, args.mask_rate)
        return {"input_ids": inputs, "labels": labels}

    losses = train_loop(model, batches, args.bert_steps, args.bert_lr, "bert")
    eval_gen = torch.Generator().manual_seed(args.seed + 3)

    def held_kwargs(x):
        inputs, labels = mask_tokens(x, tokenizer, eval_gen)  # evaluation always at the standard 15%
        return {"input_ids": inputs, "labels": labels}

    held = eval_loss(model, held_rows, held_kwargs)
    return {"model": model, "tokenizer": tokenizer, "losses": losses, "heldout_loss": held, "tokens": len(stream)}


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
    a, g, b = report["args"], report["gpt2"], report["bert"]
    fence = "```"
    lines = [
        "# Embedded tiny models: how they were trained",
        "",
        "`gpt2-tiny/` (GPT2LMHeadModel) and `bert-tiny/` (BertForMaskedLM): 4 layers, 4 heads, hidden 256, FFN 1024,",
        "512 positions, byte-level BPE vocabulary of 4096 (one tokenizer per model), about 4.4M parameters each,",
        "weights stored in float16 (`config.json` says `dtype: float16`; load with `dtype=torch.float32` on CPU).",
        "They exist so that the parity and perplexity suites, the tests and `eet-hf demo` run with no model hub.",
        "",
        "## Command",
        "",
        f"{fence}\n{report['command']}\n{fence}",
        "",
        f"Seed {report['seed']}; Python {report['python']}, torch {report['torch']}, 2 CPU threads, bf16 autocast.",
        f"Wall time: {report['minutes']['total']} min ({report['minutes']['gpt2']} min to the end of GPT-2),",
        "on a 2-core machine that other jobs were sharing; reruns on the same Python and torch give the same files.",
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
        "rows so all 512 position embeddings are trained.",
        "",
        "| | GPT-2 | BERT |",
        "|---|---|---|",
        f"| steps | {a['gpt2_steps']} | {a['bert_steps']} |",
        f"| peak learning rate | {a['gpt2_lr']} | {a['bert_lr']} |",
        f"| short rows | {a['gpt2_short_len']} tokens | {a['bert_short_len']} tokens ([CLS] ... [SEP]) |",
        f"| objective | next token | masked LM, {float(a['mask_rate']):.0%} of tokens (80/10/10 [MASK]/random/kept) |",
        f"| training tokens (one epoch) | {g['train_tokens']} | {b['train_tokens']} |",
        f"| final training loss (last 50 steps) | {g['final_train_loss']} | {b['final_train_loss']} |",
        f"| held-out loss | {g['heldout_loss']} (ppl {math.exp(g['heldout_loss']):.1f}) "
        f"| {b['heldout_mlm_loss']} (15% masking) |",
        "",
        "## Samples (fp32, after training)",
        "",
        "GPT-2, greedy (40 new tokens):",
        "",
        *[f"    {json.dumps(t)}" for t in g["greedy"]],
        "",
        "GPT-2, sampled (top-k 40, temperature 0.8, seed 0):",
        "",
        *[f"    {json.dumps(t)}" for t in g["sampled"]],
        "",
        "BERT, top-5 fill-mask predictions:",
        "",
        *[f"    {t}" for t in b["fill_mask"]],
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--tokens-per-step", type=int, default=2048)
    parser.add_argument("--long-share", type=float, default=0.3, help="share of steps on 512-token rows")
    parser.add_argument("--gpt2-steps", type=int, default=1500)
    parser.add_argument("--gpt2-lr", type=float, default=2e-3)
    parser.add_argument("--gpt2-short-len", type=int, default=256)
    parser.add_argument("--bert-steps", type=int, default=1500)
    parser.add_argument("--bert-lr", type=float, default=1e-3)
    parser.add_argument("--bert-short-len", type=int, default=128)
    parser.add_argument(
        "--mask-rate", type=float, default=0.3, help="BERT training masking rate (30%% learns faster than 15%%)"
    )
    parser.add_argument("--heldout-share", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    started = time.perf_counter()
    docs = collect_docstrings()
    train_docs, held_docs = split(docs, args.heldout_share, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    heldout_path = args.out / "heldout.txt"
    heldout_path.write_text("\n\n".join(held_docs) + "\n", encoding="utf-8")
    print(f"{len(docs)} docstrings: {len(train_docs)} train, {len(held_docs)} held out -> {heldout_path}")

    gpt2 = train_gpt2(train_docs, held_docs, args)
    gpt2_minutes = (time.perf_counter() - started) / 60
    bert = train_bert(train_docs, held_docs, args)
    total_minutes = (time.perf_counter() - started) / 60

    prompts = ["Return the", "This module provides", "Create a new", "If the file"]
    masked = ["Return the [MASK] of the list.", "Raise a ValueError if the [MASK] is not found."]
    report = {
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:])),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "seed": args.seed,
        "docstrings": {"train": len(train_docs), "heldout": len(held_docs)},
        "args": {k: str(v) for k, v in vars(args).items()},
        "minutes": {"gpt2": round(gpt2_minutes, 2), "total": round(total_minutes, 2)},
        "gpt2": {
            "train_tokens": gpt2["tokens"],
            "final_train_loss": round(mean_tail(gpt2["losses"]), 4),
            "heldout_loss": round(gpt2["heldout_loss"], 4),
            "greedy": samples(gpt2, prompts),
            "sampled": samples(gpt2, prompts, sample=True),
        },
        "bert": {
            "train_tokens": bert["tokens"],
            "final_train_loss": round(mean_tail(bert["losses"]), 4),
            "heldout_mlm_loss": round(bert["heldout_loss"], 4),
            "fill_mask": fill_mask_samples(bert, masked),
        },
    }
    save(gpt2, args.out / "gpt2-tiny", torch.float16)
    save(bert, args.out / "bert-tiny", torch.float16)
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_training_md(report, args.out / "TRAINING.md")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
