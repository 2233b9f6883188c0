"""accelerate / restore / explain on modules that hold transformers models (eet_hf/wrappers.py): sentence-transformers
models, unchanged, on CPU (reference ops): a SentenceTransformer of the embedded BERT with mean pooling and one of an
XLM-RoBERTa-shaped tiny model (random weights, the BERT tokenizer), saved and loaded from disk, encode() on held-out
text of mixed lengths through the packed encoder against plain sentence-transformers; its call form through
whole-model graphs (the fake capture backend); restore, explain and save on the SentenceTransformer itself; and a
user's module holding two models."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from torch import nn

import eet_hf
from eet_hf.encoder import model_graphs
from eet_hf.models import heldout_text_path

from .helpers import assert_close, padded_batch
from .test_encoder_model_graphs import FakeGraphs

ST_ATOL = 1e-5  # fp32 embeddings: eet's packed encoder against plain sentence-transformers
BATCH = 16


def _sentences(count: int = 40) -> list[str]:
    """Held-out docstring paragraphs (never trained on): 20 to 400 characters, so every batch is padded."""
    paragraphs = [" ".join(p.split()) for p in heldout_text_path().read_text().split("\n\n")]
    return [p for p in paragraphs if p][:count]


def _load(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_encode_runs_the_packed_encoder_and_matches(st_dirs, family, packed_calls):
    plain, model = _load(st_dirs[family]), _load(st_dirs[family])
    assert eet_hf.accelerate(model) is model
    assert model[0].auto_model.config.model_type == family
    sentences = _sentences()
    expected = plain.encode(sentences, batch_size=BATCH, convert_to_tensor=True)
    assert not packed_calls
    got = model.encode(sentences, batch_size=BATCH, convert_to_tensor=True)
    assert len(packed_calls) == -(-len(sentences) // BATCH)  # every batch through the packed encoder
    assert got.shape == expected.shape
    assert_close(got, expected, ST_ATOL)


def test_explain_restore_and_save_on_the_sentence_transformer(st_dirs, packed_calls, tmp_path):
    plain, model = _load(st_dirs["bert"]), _load(st_dirs["bert"])
    eet_hf.accelerate(model)
    report = eet_hf.explain(model)
    assert report.model_type == "bert" and "encoder" in report.accelerated and not report.fallbacks, report
    assert str(report) == str(eet_hf.explain(model[0].auto_model))
    sentences = _sentences(20)
    expected = plain.encode(sentences, batch_size=BATCH, convert_to_tensor=True)
    model.save(str(tmp_path))  # save_pretrained of the accelerated model inside: the same weights, plain config
    saved = _load(str(tmp_path))
    assert torch.equal(saved.encode(sentences, batch_size=BATCH, convert_to_tensor=True), expected)
    assert eet_hf.restore(model) is model
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert "not accelerated" in eet_hf.explain(model).fallbacks["<model>"]
    assert torch.equal(model.encode(sentences, batch_size=BATCH, convert_to_tensor=True), expected)
    assert not packed_calls


def test_encode_calls_take_whole_model_graphs(st_dirs):
    """sentence-transformers calls the HF model with input_ids and attention_mask as keywords and return_dict=True:
    the plain form whole-model graphs replay (on CUDA; here the fake capture backend), with the same embeddings."""
    plain, model = _load(st_dirs["xlm-roberta"]), _load(st_dirs["xlm-roberta"])
    eet_hf.accelerate(model)
    hf = model[0].auto_model
    installed = hf.__dict__[model_graphs.ATTR]
    cache = hf.__dict__[model_graphs.ATTR] = model_graphs.ModelGraphs(
        FakeGraphs(), max_tokens=installed.max_tokens, input_names=installed.input_names)
    sentences = _sentences(32)
    expected = plain.encode(sentences, batch_size=BATCH, convert_to_tensor=True)
    for _ in range(3):  # the same two batch shapes each time: seen, captured, replayed
        got = model.encode(sentences, batch_size=BATCH, convert_to_tensor=True)
        assert_close(got, expected, ST_ATOL)
    assert (cache.captures, cache.replays, cache.fallbacks) == (2, 4, 0)


class _TwoModels(nn.Module):
    """A user's wrapper: a BERT and a DistilBERT side by side, and a plain layer."""

    def __init__(self) -> None:
        super().__init__()
        enc = dict(vocab_size=100, max_position_embeddings=64, pad_token_id=0)
        self.query = tf.BertModel(tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=128, **enc)).eval()
        self.docs = nn.ModuleDict({"encoder": tf.DistilBertModel(tf.DistilBertConfig(
            dim=64, n_layers=2, n_heads=4, hidden_dim=128, **enc)).eval()})
        self.head = nn.Linear(64, 8)

    def forward(self, ids, mask):
        q = self.query(ids, attention_mask=mask).last_hidden_state[:, 0]
        d = self.docs["encoder"](ids, attention_mask=mask).last_hidden_state[:, 0]
        return self.head(q) + self.head(d)


def test_a_module_holding_several_models(packed_calls):
    wrapper = _TwoModels()
    ref = copy.deepcopy(wrapper)
    ids, mask = padded_batch(3, 9, [9, 4, 1], "right")
    with pytest.raises(TypeError, match="unknown option"):
        eet_hf.accelerate(wrapper, fast=True)
    assert eet_hf.accelerate(wrapper) is wrapper
    assert "forward" not in wrapper.__dict__ and "forward" not in wrapper.head.__dict__  # the wrapper stays its own
    report = eet_hf.explain(wrapper)
    assert report.model_type == "bert+distilbert"
    assert "query: encoder" in report.accelerated and "docs.encoder: transformer" in report.accelerated, report
    with torch.no_grad():
        assert_close(wrapper(ids, mask), ref(ids, mask), 1e-5)
    assert len(packed_calls) == 2
    eet_hf.restore(wrapper)
    assert all("forward" not in m.__dict__ for m in wrapper.modules())
    with torch.no_grad():
        assert torch.equal(wrapper(ids, mask), ref(ids, mask))


def test_a_refused_model_inside_undoes_the_others():
    """strict=True refuses the DistilBERT (a user's attention class): the BERT accelerated before it is restored."""
    wrapper = _TwoModels()
    attention = wrapper.docs["encoder"].transformer.layer[0].attention
    attention.__class__ = type("MyAttention", (type(attention),), {})
    with pytest.raises(eet_hf.EetUnsupportedError, match="strict"):
        eet_hf.accelerate(wrapper, strict=True)
    assert all("forward" not in m.__dict__ for m in wrapper.modules())
    assert "not accelerated" in eet_hf.explain(wrapper).fallbacks["query: <model>"]
