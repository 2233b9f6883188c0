"""Shared fixtures: a deterministic seed for every test, a counter of packed-encoder calls, saved
sentence-transformers models."""

import pytest
import torch
import transformers as tf

import eet_hf.encoder.packed as packed
from eet_hf.models import default_model_path

from .helpers import count_calls


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def packed_calls(monkeypatch) -> list[int]:
    """Counts calls of the packed encoder forward (eet_hf/encoder/packed.py): one per forward that took it."""
    return count_calls(monkeypatch, packed, "packed_forward")


@pytest.fixture(scope="session")
def st_dirs(tmp_path_factory) -> dict[str, str]:
    """Saved SentenceTransformers (Transformer + mean Pooling): the embedded BERT, and a tiny XLM-RoBERTa from a config
    (random weights) with the BERT's tokenizer, pad_token_id matching so RoBERTa's position ids are right."""
    st = pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers (.ci/run does)")
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    bert_path = default_model_path("bert")
    tokenizer = tf.AutoTokenizer.from_pretrained(bert_path)
    torch.manual_seed(0)
    xlmr = tf.XLMRobertaModel(tf.XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        pad_token_id=tokenizer.pad_token_id, max_position_embeddings=tokenizer.model_max_length + 2,
        initializer_range=0.2))
    xlmr_hf = tmp_path_factory.mktemp("xlmr-hf")
    xlmr.save_pretrained(xlmr_hf)
    tokenizer.save_pretrained(xlmr_hf)
    dirs = {}
    for name, path in (("bert", bert_path), ("xlm-roberta", xlmr_hf)):
        transformer = Transformer(str(path), model_kwargs={"dtype": torch.float32})
        model = st.SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                                       device="cpu")
        dirs[name] = str(tmp_path_factory.mktemp(f"st-{name}"))
        model.save(dirs[name])
    return dirs
