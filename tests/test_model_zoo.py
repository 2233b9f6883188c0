"""Any HF model: eet_hf.accelerate() on ~60 architectures that have no adapter or family record of their own
(tiny random configs, CPU, fp32), against an unaccelerated deep copy: the same logits / hidden states at every real
position of a padded batch, and the same greedy tokens from generate(). What eet cannot fuse must keep HF's code
running, never crash and never answer differently (README: "works on any HF model")."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers as tf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

import eet_hf

FP32_ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
SEQ2SEQ_SMALL = dict(num_layers=2, num_encoder_layers=2, num_decoder_layers=2, d_model=64, d_kv=16, d_ff=128, num_heads=4, encoder_layers=2,
                     decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                     decoder_ffn_dim=128, decoder_start_token_id=0)
EXTRA = {  # what a tiny config of these needs beyond SMALL to be a valid model at all
    "gptj": dict(rotary_dim=8),
    "codegen": dict(rotary_dim=8),
    # Mamba mixer at its default width: 5.17's chunked scan allocates 24 GiB for it
    "falcon_h1": dict(mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=16,
                      mamba_chunk_size=16),
}

CAUSAL = ["falcon", "bloom", "gptj", "codegen", "phi", "phi3", "gemma", "gemma2", "gemma3_text", "qwen3", "qwen2_moe",
          "qwen3_moe", "mixtral", "stablelm", "starcoder2", "olmo", "olmo2", "cohere", "granite", "mpt", "biogpt",
          "xglm", "gpt_bigcode", "persimmon", "nemotron", "glm", "helium", "smollm3", "exaone4", "ministral",
          "seed_oss", "gpt_oss", "llama4_text", "falcon_h1", "bitnet", "arcee", "hunyuan_v1_dense", "ernie4_5",
          "apertus"]
ENCODERS = ["albert", "deberta-v2", "deberta", "mpnet", "electra", "roberta-prelayernorm", "data2vec-text", "ernie",
            "xlm-roberta-xl", "camembert", "mobilebert", "nomic_bert", "modernbert", "megatron-bert", "luke",
            "nystromformer", "rembert", "convbert", "canine", "layoutlm", "markuplm"]
SEQ2SEQ = ["t5", "bart", "mbart", "pegasus", "marian", "blenderbot-small", "m2m_100", "mt5", "umt5", "longt5", "led",
           "plbart", "prophetnet"]


def _known(names: list[str]) -> list[str]:
    # transformers 5.17 lacks a few of the newest architectures; each version is tested on the ones it has.
    return [name for name in names if name in CONFIG_MAPPING]


def _config(model_type: str, **defaults) -> tf.PretrainedConfig:
    config = tf.AutoConfig.for_model(model_type)
    for key, value in {**defaults, **EXTRA.get(model_type, {})}.items():
        if hasattr(config, key) or key == "head_dim":
            try:
                setattr(config, key, value)
            except (AttributeError, NotImplementedError):  # derived (Falcon's head_dim) or named otherwise
                pass
    return config


def _pair(auto_class, model_type: str, **defaults):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = auto_class.from_config(_config(model_type, **defaults)).eval()
    reference = copy.deepcopy(model)
    eet_hf.accelerate(model)
    return model, reference


def _ids(batch: int = 3, seq: int = 9) -> torch.Tensor:
    return torch.randint(3, 128, (batch, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_type", _known(CAUSAL))
def test_causal_lm_left_padded_logits_and_greedy_tokens(model_type):
    model, reference = _pair(tf.AutoModelForCausalLM, model_type, **SMALL)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids = _ids().masked_fill(mask == 0, 0)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        want = reference(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        assert (got - want)[real].abs().max().item() <= FP32_ATOL
        kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(ids, **kwargs), reference.generate(ids, **kwargs))


@pytest.mark.parametrize("model_type", _known(ENCODERS))
def test_encoder_right_padded_hidden_states(model_type):
    model, reference = _pair(tf.AutoModel, model_type, **SMALL)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = _ids()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask)[0]
        want = reference(input_ids=ids, attention_mask=mask)[0]
    assert (got - want)[mask.bool()].abs().max().item() <= FP32_ATOL


@pytest.mark.parametrize("model_type", _known(SEQ2SEQ))
def test_seq2seq_logits_and_greedy_tokens(model_type):
    model, reference = _pair(tf.AutoModelForSeq2SeqLM, model_type, **SMALL, **SEQ2SEQ_SMALL)
    for m in (model, reference):
        m.generation_config.decoder_start_token_id = 0
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ids = _ids()
    decoder_ids = torch.randint(3, 128, (3, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        want = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        assert (got - want).abs().max().item() <= FP32_ATOL
        kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False)
        assert torch.equal(model.generate(ids, **kwargs), reference.generate(ids, **kwargs))
