"""SentenceTransformer.encode() with tokenization ahead of the forward (eet_hf/sentence_pipeline.py), on CPU: the
same embeddings to the bit as sentence-transformers' own loop on the same accelerated model (same batches, same
forwards), every batch tokenized on a worker thread; the options it leaves to sentence-transformers' loop; the
EET_HF_ST_TOKENIZE_WORKERS switch; errors on either side of the pipeline with no thread left behind; restore, a second
accelerate, copies."""

from __future__ import annotations

import copy
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import eet_hf
from eet_hf import sentence_pipeline as sp

from .helpers import assert_close
from .test_wrappers import ST_ATOL, _load, _sentences

pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers (.ci/run does)")


def _accelerated(path: str, monkeypatch, workers: int | None = None):
    if workers is None:
        monkeypatch.delenv(sp.ENV, raising=False)
    else:
        monkeypatch.setenv(sp.ENV, str(workers))
    return eet_hf.accelerate(_load(path))


def _record_preprocess(model, fail_on: int | None = None) -> list[str]:
    """Names of the threads that ran each model.preprocess call; the call numbered fail_on (from 0) raises."""
    threads: list[str] = []
    real = model.preprocess

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        if len(threads) - 1 == fail_on:
            raise RuntimeError("tokenizer broke on this batch")
        return real(*args, **kwargs)

    model.preprocess = recording
    return threads


def _assert_same(got, expected) -> None:
    assert type(got) is type(expected)
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
    elif isinstance(expected, torch.Tensor):
        assert (got.dtype, got.device) == (expected.dtype, expected.device) and torch.equal(got, expected)
    else:
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            _assert_same(a, b)


def _stacked(embeddings) -> torch.Tensor:
    return torch.stack(embeddings) if isinstance(embeddings, list) else torch.as_tensor(embeddings)


CASES = {
    "tensor, short last batch": (40, dict(batch_size=16, convert_to_tensor=True)),
    "numpy, batch 7": (40, dict(batch_size=7)),
    "normalized": (33, dict(batch_size=8, normalize_embeddings=True, convert_to_tensor=True)),
    "truncated": (33, dict(batch_size=16, truncate_dim=24)),
    "truncated and normalized": (20, dict(batch_size=6, truncate_dim=24, normalize_embeddings=True)),
    "prompt": (25, dict(batch_size=8, prompt="query: ", convert_to_tensor=True)),
    "list of tensors": (20, dict(batch_size=8, convert_to_numpy=False)),
    "one sentence": (1, dict(batch_size=16, convert_to_tensor=True)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_encode_matches_sentence_transformers_loop_to_the_bit(st_dirs, family, case, monkeypatch):
    count, options = CASES[case]
    sentences = _sentences(count)
    reference = _accelerated(st_dirs[family], monkeypatch, workers=0)
    model = _accelerated(st_dirs[family], monkeypatch)
    assert isinstance(model.__dict__["_inference"], sp.PipelinedInference)
    expected = reference.encode(sentences, **options)
    threads = _record_preprocess(model)
    _assert_same(model.encode(sentences, **options), expected)
    assert len(threads) == -(-count // options["batch_size"])
    assert all(name.startswith(sp.THREAD_PREFIX) for name in threads), threads
    plain = _load(st_dirs[family]).encode(sentences, **options)  # and eet's forward is HF's, within fp32 noise
    assert_close(_stacked(expected), _stacked(plain), ST_ATOL)


def test_a_single_string_and_encode_query(st_dirs, monkeypatch):
    reference = _accelerated(st_dirs["bert"], monkeypatch, workers=0)
    model = _accelerated(st_dirs["bert"], monkeypatch)
    threads = _record_preprocess(model)
    sentence = _sentences(1)[0]
    _assert_same(model.encode(sentence), reference.encode(sentence))
    _assert_same(model.encode_query([sentence, "short"]), reference.encode_query([sentence, "short"]))
    assert len(threads) == 2 and all(name.startswith(sp.THREAD_PREFIX) for name in threads), threads


@pytest.mark.parametrize("options", [dict(output_value="token_embeddings"), dict(output_value=None)],
                         ids=["token_embeddings", "all outputs"])
def test_other_outputs_run_sentence_transformers_loop(st_dirs, options, monkeypatch):
    sentences = _sentences(20)
    reference = _accelerated(st_dirs["bert"], monkeypatch, workers=0)
    model = _accelerated(st_dirs["bert"], monkeypatch)
    expected = reference.encode(sentences, batch_size=8, **options)
    threads = _record_preprocess(model)
    got = model.encode(sentences, batch_size=8, **options)
    assert threads == ["MainThread"] * 3
    if options["output_value"] is None:
        assert [list(g) for g in got] == [list(e) for e in expected]
        got, expected = [g["sentence_embedding"] for g in got], [e["sentence_embedding"] for e in expected]
    _assert_same(got, expected)


def test_no_workers_leaves_sentence_transformers_loop(st_dirs, monkeypatch):
    model = _accelerated(st_dirs["bert"], monkeypatch, workers=0)
    assert "_inference" not in model.__dict__
    assert model[0].auto_model.__dict__.get(eet_hf.api.STATE_ATTR) is not None  # the model inside is accelerated
    threads = _record_preprocess(model)
    model.encode(_sentences(20), batch_size=8)
    assert threads == ["MainThread"] * 3


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_bad_worker_count_is_refused_and_undone(st_dirs, value, monkeypatch):
    monkeypatch.setenv(sp.ENV, value)
    model = _load(st_dirs["bert"])
    with pytest.raises(ValueError, match=sp.ENV):
        eet_hf.accelerate(model)
    assert "_inference" not in model.__dict__
    assert eet_hf.api.STATE_ATTR not in model[0].auto_model.__dict__


def _break_pooling(model, on_call: int) -> None:
    pooling, calls = model[1], []
    real = pooling.forward

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) - 1 == on_call:
            raise RuntimeError("pooling broke on this batch")
        return real(*args, **kwargs)

    pooling.forward = forward


@pytest.mark.parametrize("where", ["tokenizer", "pooling"])
@pytest.mark.parametrize("workers", [1, 3])
def test_an_error_on_either_side_propagates_and_no_thread_is_left(st_dirs, where, workers, monkeypatch):
    model = _accelerated(st_dirs["bert"], monkeypatch, workers=workers)
    before = threading.active_count()
    if where == "tokenizer":
        threads = _record_preprocess(model, fail_on=2)
    else:
        _break_pooling(model, on_call=1)
    with pytest.raises(RuntimeError, match=f"{where} broke on this batch"):
        model.encode(_sentences(40), batch_size=4)
    assert threading.active_count() == before
    assert not [t.name for t in threading.enumerate() if t.name.startswith(sp.THREAD_PREFIX)]
    if where == "tokenizer":
        assert len(threads) <= 2 + workers + 1  # bounded look-ahead: not all 10 batches were started


def test_restore_removes_it_and_a_second_accelerate_does_not_stack(st_dirs, monkeypatch):
    plain = _load(st_dirs["bert"])
    model = _accelerated(st_dirs["bert"], monkeypatch)
    installed = model.__dict__["_inference"]
    assert installed.model is model
    assert eet_hf.accelerate(model) is model and model.__dict__["_inference"] is installed
    assert model.state_dict().keys() == plain.state_dict().keys()
    eet_hf.restore(model)
    assert "_inference" not in model.__dict__ and model.__dict__.keys() == plain.__dict__.keys()
    threads = _record_preprocess(model)
    sentences = _sentences(20)
    assert torch.equal(model.encode(sentences, batch_size=8, convert_to_tensor=True),
                       plain.encode(sentences, batch_size=8, convert_to_tensor=True))
    assert threads == ["MainThread"] * 3


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_pipelines_its_own_encode(st_dirs, how, monkeypatch):
    model = _accelerated(st_dirs["bert"], monkeypatch)
    twin = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert twin.__dict__["_inference"].model is twin
    sentences = _sentences(20)
    assert torch.equal(twin.encode(sentences, batch_size=8, convert_to_tensor=True),
                       model.encode(sentences, batch_size=8, convert_to_tensor=True))


def test_ahead_keeps_order_runs_the_first_alone_and_looks_ahead_boundedly():
    pulled: list[int] = []

    def items():
        for item in range(10):
            pulled.append(item)
            yield item

    def work(item: int) -> int:
        if item == 0:
            assert pulled == [0]  # nothing else is submitted while the first item runs
        return item * item

    with ThreadPoolExecutor(2) as pool:
        results = sp._ahead(pool, work, items(), depth=3)
        assert next(results) == 0
        assert len(pulled) == 1 + 3
        assert list(results) == [i * i for i in range(1, 10)]
