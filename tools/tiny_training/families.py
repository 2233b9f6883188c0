"""Per-family recipes: tokenizer, config, batches and training for the tiny GPT-2, Llama and BERT."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from .data import mask_tokens, pack, phased_batches, token_stream
from .loop import eval_loss, train_loop
from .tokenizer import bert_tokenizer, gpt2_tokenizer, llama_tokenizer


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
    return _train_causal(model, tokenizer, stream, held_rows, args, "gpt2")


def train_llama(train_docs, held_docs, args) -> dict:
    """A Llama 3-style decoder: GQA (4 query / 2 key-value heads, head_dim 64), SiLU-gated MLP, RMSNorm, rotary
    (default theta), tied embeddings (as Llama-3.2-1B); every document starts with BOS, as the tokenizer's."""
    tokenizer = llama_tokenizer(train_docs, args.vocab_size)
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream = token_stream(tokenizer, train_docs, eos_id, prefix=bos_id)
    held_rows = pack(token_stream(tokenizer, held_docs, eos_id, prefix=bos_id), 512)
    print(f"[llama] {len(stream)} training tokens, {held_rows.numel()} held-out tokens")

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=704,  # ~2.75x hidden as Llama's 8/3 rule, rounded to a multiple of 16 (kernel tiles)
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,  # Llama 3's
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model = LlamaForCausalLM(config)
    return _train_causal(model, tokenizer, stream, held_rows, args, "llama")


def _train_causal(model, tokenizer, stream: list[int], held_rows: torch.Tensor, args, name: str) -> dict:
    """Next-token training of a causal LM with the `{name}_steps / _lr / _short_len` arguments."""
    steps, lr, short_len = (getattr(args, f"{name}_{key}") for key in ("steps", "lr", "short_len"))
    rows = phased_batches(
        pack(stream, short_len), pack(stream, 512), steps, args.long_share, args.tokens_per_step, args.seed
    )

    def batches(step: int) -> dict:
        x = rows(step)
        return {"input_ids": x, "labels": x}

    losses = train_loop(model, batches, steps, lr, name)
    held = eval_loss(model, held_rows, lambda x: {"input_ids": x, "labels": x})
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return {"model": model, "tokenizer": tokenizer, "losses": losses, "heldout_loss": held, "tokens": len(stream)}


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
