"""Model shapes the suites run (published configs, random weights) and fast ways to build them.

No hub access: every model is built from its config. Speed does not depend on the weights' values, so weights
are seeded random (`build`), or, for the largest models, allocated uninitialised on the GPU and filled there
(`build_empty`: no CPU-side random init, so a 60B model builds in seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PretrainedConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    XLMRobertaConfig,
    XLMRobertaModel,
)

SEED = 0
# Token ids 0 (pad / bos / eos) keep tiny vocabularies valid; generation never stops early (eos_token_id=None).
_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


@dataclass(frozen=True)
class ModelShape:
    """A named config and the HF class that builds it."""

    name: str
    make_config: Callable[[], PretrainedConfig]
    model_class: type

    def build(self, device: str, dtype: torch.dtype) -> torch.nn.Module:
        return build(self.model_class, self.make_config(), device, dtype)


def gpt2_config(layers: int, hidden: int, heads: int, positions: int = 1024, vocab: int = 50257) -> GPT2Config:
    return GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, n_positions=positions, vocab_size=vocab, **_IDS)


def _gpt2(name: str, layers: int, hidden: int, heads: int, **kw) -> ModelShape:
    return ModelShape(name, lambda: gpt2_config(layers, hidden, heads, **kw), GPT2LMHeadModel)


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int) -> ModelShape:
    def make() -> LlamaConfig:
        return LlamaConfig(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
            intermediate_size=inter, vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=True, **_IDS,
        )

    return ModelShape(name, make, LlamaForCausalLM)


def _qwen3(name: str, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, inter: int,
           vocab: int) -> ModelShape:
    def make() -> Qwen3Config:
        return Qwen3Config(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
            head_dim=head_dim, intermediate_size=inter, vocab_size=vocab, max_position_embeddings=4096,
            tie_word_embeddings=True, **_IDS,
        )

    return ModelShape(name, make, Qwen3ForCausalLM)


def _opt(name: str, layers: int, hidden: int, heads: int, ffn: int, vocab: int) -> ModelShape:
    def make() -> OPTConfig:
        return OPTConfig(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, ffn_dim=ffn,
            word_embed_proj_dim=hidden, vocab_size=vocab, max_position_embeddings=2048, **_IDS,
        )

    return ModelShape(name, make, OPTForCausalLM)


def _bert(name: str, layers: int, hidden: int, heads: int, inter: int, vocab: int = 30522) -> ModelShape:
    def make() -> BertConfig:
        return BertConfig(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
            vocab_size=vocab, pad_token_id=0,
        )

    return ModelShape(name, make, BertModel)


def _xlmr(name: str, layers: int, hidden: int, heads: int, inter: int, vocab: int) -> ModelShape:
    # Pad id 0, as the embedded BERT tokenizer pads (RoBERTa numbers positions from pad id + 1), and 512 positions
    # past it, as XLM-R's 514.
    def make() -> XLMRobertaConfig:
        return XLMRobertaConfig(
            num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
            vocab_size=vocab, pad_token_id=0, max_position_embeddings=514,
        )

    return ModelShape(name, make, XLMRobertaModel)


GPT2_SIZES = [
    _gpt2("gpt2", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
]
# Issue #7's families: Llama-3.2-1B's shape (GQA, tied embeddings) and OPT-1.3B's; Qwen3-1.7B's (per-head q/k
# norms, head_dim 128, tied embeddings).
OTHER_DECODERS = [
    _llama("llama-1b", 16, 2048, 32, 8, 8192, 128256),
    _opt("opt-1.3b", 24, 2048, 32, 8192, 50272),
    _qwen3("qwen3-1.7b", 28, 2048, 16, 8, 128, 6144, 151936),
]
BERT_SIZES = [_bert("bert-base", 12, 768, 12, 3072), _bert("bert-large", 24, 1024, 16, 4096)]
# sentence-embed (issue #28): BERT-base and XLM-R-base as sentence-transformers wrap them; XLM-R's vocabulary is cut
# from 250,002 rows to BERT's 30,522 (the suite's docstring says why).
SENTENCE_SIZES = [_bert("st-bert-base", 12, 768, 12, 3072), _xlmr("st-xlmr-base", 12, 768, 12, 3072, 30522)]

# --quick (CPU, CI): same classes, tiny shapes.
TINY_GPT2 = [_gpt2("gpt2-tiny", 2, 64, 4, positions=64, vocab=512)]
TINY_OTHER_DECODERS = [_llama("llama-tiny", 2, 64, 4, 2, 128, 512), _opt("opt-tiny", 2, 64, 4, 128, 512),
                       _qwen3("qwen3-tiny", 2, 64, 4, 2, 16, 128, 512)]
TINY_BERT = [_bert("bert-tiny", 2, 64, 4, 128, vocab=512)]
# 4,096 rows: the embedded tokenizer's ids (sentence-embed feeds real text, not ids drawn below the vocabulary).
TINY_SENTENCE = [_bert("st-bert-tiny", 2, 64, 4, 128, vocab=4096)]


def decoder_layer_config(hidden: int, total: int, vocab: int = 1024) -> GPT2Config:
    """One GPT-2 block (n_layer=1); head dim 64 up to GPT-2 XL's width, 128 above (GPT-3's), 16 for the tiny
    --quick widths."""
    head_dim = 16 if hidden < 128 else 64 if hidden <= 1600 else 128
    if hidden % head_dim:
        raise ValueError(f"decoder-layer hidden size {hidden} is not a multiple of head dim {head_dim}")
    return gpt2_config(1, hidden, hidden // head_dim, positions=total, vocab=vocab)


def decoder_layer_model(hidden: int, total: int, device: str, dtype: torch.dtype, lm_head: bool = False) -> torch.nn.Module:
    """The one-layer GPT-2 (GPT2Model), or with lm_head the same shape under GPT-2's LM head."""
    return build(GPT2LMHeadModel if lm_head else GPT2Model, decoder_layer_config(hidden, total), device, dtype)


def build(model_class: type, config: PretrainedConfig, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Seeded random weights, initialised directly on `device` (fast on a GPU), then cast to `dtype`."""
    torch.manual_seed(SEED)
    with torch.device(device):
        model = model_class(config)
    return model.to(dtype).eval()


def build_empty(model_class: type, config: PretrainedConfig, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Allocate on `device` without any CPU work per weight: build on the meta device, `to_empty`, then fill
    each tensor with small normal values on the device (uninitialised memory could hold inf/NaN).
    Only for classes without computed buffers (GPT-2 has none; Llama's rotary inv_freq would be garbage)."""
    with torch.device("meta"):
        model = model_class(config)
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(SEED)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
        for buffer in model.buffers():
            buffer.zero_()
    model.tie_weights()
    return model.eval()


def param_count(model: torch.nn.Module) -> int:
    """Parameters counted once each (tied embeddings are one tensor)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
