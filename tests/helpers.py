"""Test helpers: tiny models from configs, an in-process tokenizer (no hub), padded batches, allclose."""

from __future__ import annotations

import copy

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, GPT2Config, PreTrainedTokenizerFast

WORDS = [f"w{i}" for i in range(90)]


def gpt2_config(**overrides) -> GPT2Config:
    base = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=100, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
    return GPT2Config(**{**base, **overrides})


def bert_config(**overrides) -> BertConfig:
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100,
                max_position_embeddings=64, pad_token_id=0)
    return BertConfig(**{**base, **overrides})


def pair(model_cls, config, dtype=torch.float32):
    """(model, untouched deep copy), eval mode."""
    model = model_cls(config).to(dtype).eval()
    return model, copy.deepcopy(model)


def make_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS, ids matching the tiny configs' vocab (100)."""
    specials = ["[PAD]", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", mask_token="[MASK]",
                                       cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="[UNK]", padding_side="left")


def count_calls(monkeypatch, owner, name: str) -> list[int]:
    """Replaces owner.<name> (for the test) by a wrapper that appends 1 to the returned list on each call."""
    calls: list[int] = []
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def padded_batch(batch: int, length: int, lengths: list[int], side: str, vocab: int = 100):
    """input_ids [batch, length] of ids >= 7 (no specials) and the attention mask for the given lengths."""
    ids = torch.randint(7, vocab, (batch, length))
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, length - n :] = 1
        else:
            mask[b, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, where: torch.Tensor | None = None):
    """max |actual - expected| <= atol (optionally only where `where` is True); names the first bad index."""
    diff = (actual.double() - expected.double()).abs()
    if where is not None:
        diff = diff * where.to(diff.dtype)
    assert torch.isfinite(actual).all(), "non-finite values in actual"
    worst = diff.max().item()
    if worst > atol:
        idx = (diff > atol).nonzero()[0].tolist()
        raise AssertionError(f"max |diff| {worst:.3g} > {atol:g}; first at {idx}: "
                             f"{actual[tuple(idx)].item():.6g} vs {expected[tuple(idx)].item():.6g}")


def randomize_layer_norms(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights and biases for every affine nn.LayerNorm (HF initializes them to 1 and 0, which would let a
    swapped or missing norm parameter go unnoticed). Returns the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                if module.bias is not None:
                    module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
    return model
