"""Model loading shared by the suites: the embedded tiny models, full-size shapes with random weights, dtypes.

No hub access: full-size models (GPT-2 small/XL, BERT base/large) are built from configs with seeded random
weights and use the tiny model's tokenizer (its ids, < 4096, are valid in the larger vocabularies).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
)

from eet_hf.models import default_model_path

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a local HF directory (`path`) or a config shape with random weights (`shape`)."""

    name: str
    family: str  # the role: "gpt2" = decoder (left padding, generate), "bert" = encoder (fill-mask, classify)
    path: Path | None = None
    shape: dict = field(default_factory=dict)
    model_type: str | None = None  # a generic-path family (no eet adapter): tiny random config of this type

    @property
    def tokenizer_path(self) -> Path:
        return self.path if self.path is not None else default_model_path(self.family)


def tiny_specs() -> list[ModelSpec]:
    return [
        ModelSpec("gpt2-tiny", "gpt2", default_model_path("gpt2")),
        ModelSpec("bert-tiny", "bert", default_model_path("bert")),
        ModelSpec("llama-tiny", "gpt2", default_model_path("llama")),
    ]


# Generic-path families (patches/generic.py): tiny random-weight configs over the embedded tokenizers' 4096 ids.
_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=512)
GENERIC_CONFIGS: dict[str, tuple[str, dict]] = {
    "roberta": ("bert", {**_TINY, "max_position_embeddings": 514}),
    "distilbert": ("bert", dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=512)),
    "electra": ("bert", {**_TINY, "embedding_size": 32}),
    "gpt_neo": ("gpt2", dict(hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                             window_size=256, max_position_embeddings=512)),
    "gpt_neox": ("gpt2", _TINY),
    "opt": ("gpt2", dict(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                         max_position_embeddings=512, word_embed_proj_dim=64)),
    "llama": ("gpt2", {**_TINY, "num_key_value_heads": 2}),
    "mistral": ("gpt2", {**_TINY, "num_key_value_heads": 2}),
    "qwen2": ("gpt2", {**_TINY, "num_key_value_heads": 1}),
}


# --quick (CI) keeps one encoder and the multi-query decoder (the trained llama-tiny, always run, is the grouped-query
# one); tests/test_generic.py covers every family in CI as well (padded logits, greedy generation).
QUICK_GENERIC = ("roberta", "qwen2")


def generic_specs(quick: bool = False) -> list[ModelSpec]:
    """Encoders RoBERTa, DistilBERT, ELECTRA; decoders GPT-Neo, GPT-NeoX, OPT, Llama, Mistral (GQA), Qwen2 (MQA).
    Named "<type>-random": "-tiny" names the trained embedded models (llama-tiny is one)."""
    types = QUICK_GENERIC if quick else tuple(GENERIC_CONFIGS)
    return [ModelSpec(f"{t.replace('_', '-')}-random", GENERIC_CONFIGS[t][0], model_type=t) for t in types]


def _generic_config(spec: ModelSpec):
    _, shape = GENERIC_CONFIGS[spec.model_type]
    # Id 0 is the embedded tokenizers' pad (and GPT-2's bos/eos); 4096 ids. Wider init than the default 0.02, so
    # random-weight logits are not flat and greedy tokens are decided by the model, not by rounding noise.
    init = {"init_std": 0.1} if spec.model_type == "opt" else {"initializer_range": 0.1}
    return AutoConfig.for_model(spec.model_type, vocab_size=4096, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                                **init, **shape)


def full_specs() -> list[ModelSpec]:
    """The published shapes (random weights): what the CUDA kernels must handle at real sizes."""
    return [
        ModelSpec("gpt2-small", "gpt2", shape={"n_embd": 768, "n_layer": 12, "n_head": 12}),
        ModelSpec("gpt2-xl", "gpt2", shape={"n_embd": 1600, "n_layer": 48, "n_head": 25}),
        ModelSpec(
            "bert-base",
            "bert",
            shape={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
        ),
        ModelSpec(
            "bert-large",
            "bert",
            shape={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
        ),
    ]


# model_type of a local directory -> its role (ModelSpec.family).
PATH_ROLES = {"gpt2": "gpt2", "llama": "gpt2", "bert": "bert"}


def spec_from_path(path: Path) -> ModelSpec:
    """A local HF directory; the role comes from its config's model_type."""
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in PATH_ROLES:
        raise ValueError(f"{path}: model_type {model_type!r} is not one of {sorted(PATH_ROLES)}")
    return ModelSpec(Path(path).name, PATH_ROLES[model_type], Path(path))


def _full_config(spec: ModelSpec):
    # Special-token ids follow the tiny tokenizer (id 0 is <|endoftext|> / [PAD]).
    if spec.family == "gpt2":
        return GPT2Config(
            vocab_size=50257, n_positions=1024, bos_token_id=0, eos_token_id=0, pad_token_id=0, **spec.shape
        )
    return BertConfig(vocab_size=30522, max_position_embeddings=512, pad_token_id=0, **spec.shape)


_HEADS = {
    ("gpt2", "lm"): AutoModelForCausalLM,
    ("bert", "lm"): AutoModelForMaskedLM,
    ("gpt2", "base"): AutoModel,
    ("bert", "base"): AutoModel,
    ("bert", "cls"): AutoModelForSequenceClassification,
    ("gpt2", "cls"): AutoModelForSequenceClassification,
}


def load_model(spec: ModelSpec, head: str, dtype: torch.dtype, device: str, attn: str = "sdpa") -> torch.nn.Module:
    """The model for `head` ("lm", "base" or "cls") in eval mode. Seeded, so heads missing from the checkpoint
    (the classifier, BERT's pooler) get the same random weights on every call."""
    auto = _HEADS[(spec.family, head)]
    extra = {"num_labels": 2} if head == "cls" else {}
    torch.manual_seed(SEED)
    if spec.path is not None:
        model = auto.from_pretrained(spec.path, dtype=dtype, attn_implementation=attn, **extra)
        model = model.to(device)
    else:
        config = _generic_config(spec) if spec.model_type else _full_config(spec)
        for key, value in extra.items():
            setattr(config, key, value)
        # Initialise on the target device: random init of GPT-2 XL on CPU takes minutes, on a GPU a moment.
        with torch.device(device):
            try:
                model = auto.from_config(config, attn_implementation=attn)
            except ValueError:  # a family without that attention in HF (GPT-Neo has no sdpa): eager
                model = auto.from_config(config, attn_implementation="eager")
        model = model.to(dtype)
    return model.eval()


def load_tokenizer(spec: ModelSpec):
    return AutoTokenizer.from_pretrained(spec.tokenizer_path)


def engines(spec: ModelSpec, head: str, dtype: torch.dtype, device: str) -> dict[str, torch.nn.Module]:
    """{"hf-sdpa": plain HF, "hf-eager": plain HF eager attention, "eet": accelerated deep copy of hf-sdpa}.
    All three hold bit-identical weights."""
    import eet_hf

    sdpa = load_model(spec, head, dtype, device, "sdpa")
    eager = load_model(spec, head, dtype, device, "eager")
    eager.load_state_dict(sdpa.state_dict())  # belt and braces: same weights whatever the init order did
    eet = eet_hf.accelerate(copy.deepcopy(sdpa))
    return {"hf-sdpa": sdpa, "hf-eager": eager, "eet": eet}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
