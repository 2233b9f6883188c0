"""Whole-model CUDA graphs (eet_hf/encoder/model_graphs.py) on the GPU: eager, capture and replay calls of one
shape with fresh inputs each, against HF; NaN-poisoned static outputs; masks a graph cannot express (left padding,
holes) on a captured shape; weights moved after a capture; the graph budget; host syncs per replayed forward.

Tolerances, as tests/gpu/test_encoder_cuda.py: fp32 within 1e-4 of HF (sdpa, fp32); fp16 error against HF fp32
at most twice HF fp16's own error plus 1e-3. Lengths and ids are drawn per run (EET_TEST_SEED replays one).
"""

from __future__ import annotations

import copy
import functools
import os
import random
import warnings

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
)

import eet_hf
from eet_hf.encoder import model_graphs

from .conftest import check_outputs

SEED = int(os.environ.get("EET_TEST_SEED", random.randrange(1 << 31)))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
VOCAB = 1000


def _bert(head, dtype, layers: int = 2):
    config = BertConfig(vocab_size=VOCAB, max_position_embeddings=512, pad_token_id=0, hidden_size=768,
                        num_hidden_layers=layers, num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    model = head(config)
    model.set_attn_implementation("sdpa")
    return model.to("cuda", dtype).eval()


def _models(head, dtype):
    """(eet model, HF in dtype, HF in fp32) with the same weights."""
    hf, fp32 = _bert(head, dtype), _bert(head, torch.float32)
    return eet_hf.accelerate(copy.deepcopy(hf)), hf, fp32


def _cache(model) -> model_graphs.ModelGraphs:
    cache = model.__dict__.get(model_graphs.ATTR)
    assert cache is not None, f"no whole-model graphs installed: {eet_hf.explain(model)}"
    return cache


def _inputs(rng: random.Random, batch: int, seq: int, side: str = "right", choices: int | None = None):
    """Fresh ids, token types and a padded mask; lengths >= 1 (BertPooler reads position 0) and one full row."""
    lengths = [rng.randint(1, seq) for _ in range(batch)]
    lengths[rng.randrange(batch)] = seq
    pos = torch.arange(seq).view(1, -1)
    n = torch.tensor(lengths).view(-1, 1)
    mask = (pos >= seq - n) if side == "left" else (pos < n)
    gen = torch.Generator().manual_seed(rng.randrange(1 << 31))
    ids = torch.randint(1, VOCAB, (batch, seq), generator=gen) * mask
    types = torch.randint(0, 2, (batch, seq), generator=gen) * mask
    inputs = {"input_ids": ids, "attention_mask": mask.long(), "token_type_ids": types}
    if choices:
        inputs = {k: v.view(batch // choices, choices, seq) for k, v in inputs.items()}
    return {k: v.cuda() for k, v in inputs.items()}


# Every tensor field: finite; fp32 within 1e-4 of HF; fp16 within the flash-attention rule (conftest.check_outputs).
_check = functools.partial(check_outputs, seed=SEED)


def _call_all(models, inputs):
    with torch.inference_mode():
        return [m(**inputs) for m in models]


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("head", [BertModel, BertForMaskedLM], ids=lambda c: c.__name__)
def test_eager_capture_replay_match_hf(cuda_ops, head, dname):
    dtype = DTYPES[dname]
    models = _models(head, dtype)
    cache = _cache(models[0])
    inner = models[0].base_model.encoder._eet_encoder.graphs
    rng = random.Random(f"{SEED}-{head.__name__}-{dname}")
    for call, expected in enumerate([(0, 0), (1, 1), (1, 2)]):  # eager (first sight), capture + replay, replay
        inputs = _inputs(rng, 3, 40)
        got, base, truth = _call_all(models, inputs)
        _check(got, base, truth, inputs["attention_mask"], dtype, f"call {call + 1}")
        assert (cache.captures, cache.replays) == expected, (call, cache.captures, cache.replays)
    assert cache.fallbacks == 0
    # The packed encoder's own graphs never captured: not inside the outer capture, nor in its warm-up.
    assert (inner.captures, inner.replays) == (0, 0), (inner.captures, inner.replays)


@pytest.mark.parametrize("head", [BertForSequenceClassification, BertForQuestionAnswering, BertForMultipleChoice],
                         ids=lambda c: c.__name__)
def test_other_heads_replay_fp16(cuda_ops, head):
    models = _models(head, torch.float16)
    cache = _cache(models[0])
    rng = random.Random(f"{SEED}-{head.__name__}")
    choices = 2 if head is BertForMultipleChoice else None
    for call in range(3):
        inputs = _inputs(rng, 4, 24, choices=choices)
        got, base, truth = _call_all(models, inputs)
        _check(got, base, truth, inputs["attention_mask"], torch.float16, f"call {call + 1}")
    assert (cache.captures, cache.replays) == (1, 2)


@pytest.mark.parametrize("dname", DTYPES)
def test_large_calls_replay_at_a_token_capacity(cuda_ops, dname):
    """Calls of >= read_min_tokens read the mask first: the graph packs the real tokens rounded up to an eighth of
    the batch (here 8 x 64 = 512 padded tokens, steps of 64), a left-padded call goes to the eager forward
    without a replay, and every answer is HF's."""
    dtype = DTYPES[dname]
    models = _models(BertForMaskedLM, dtype)
    cache = _cache(models[0])
    cache.read_min_tokens = 512
    rng = random.Random(f"{SEED}-capacity-{dname}")
    # (lengths, side, (captures, replays, fallbacks) after the call): 321..384 real tokens -> capacity 384.
    calls = [([64, 64, 40, 40, 40, 40, 30, 10], "right", (0, 0, 0)),  # 328: first sight, eager
             ([64, 64, 64, 50, 40, 30, 20, 3], "right", (1, 1, 0)),  # 335: captured and replayed
             ([64, 64, 64, 64, 64, 30, 20, 10], "right", (1, 2, 0)),  # 380: replayed
             ([64, 64, 64, 64, 64, 30, 20, 10], "left", (1, 2, 1)),  # left padding: eager, no replay
             ([64, 10, 10, 10, 10, 10, 10, 10], "right", (1, 2, 1))]  # 134: capacity 192, first sight
    for call, (lengths, side, expected) in enumerate(calls):
        pos = torch.arange(64).view(1, -1)
        n = torch.tensor(lengths).view(-1, 1)
        mask = ((pos >= 64 - n) if side == "left" else (pos < n)).long()
        gen = torch.Generator().manual_seed(rng.randrange(1 << 31))
        ids = torch.randint(1, VOCAB, (8, 64), generator=gen) * mask
        inputs = {"input_ids": ids.cuda(), "attention_mask": mask.cuda()}
        got, base, truth = _call_all(models, inputs)
        _check(got, base, truth, inputs["attention_mask"], dtype, f"call {call + 1} ({side}, {sum(lengths)} tokens)")
        assert (cache.captures, cache.replays, cache.fallbacks) == expected, (call, cache.captures, cache.replays,
                                                                              cache.fallbacks)
    assert [key[-2] for key in cache._entries] == [384], list(cache._entries)


def test_replay_rewrites_nan_poisoned_static_outputs(cuda_ops):
    models = _models(BertForMaskedLM, torch.float16)
    cache = _cache(models[0])
    rng = random.Random(f"{SEED}-poison")
    kept = None
    for _ in range(2):
        inputs = _inputs(rng, 2, 33)
        kept, base, truth = _call_all(models, inputs)
    entry = next(iter(cache._entries.values()))
    for name, static in entry.outputs:
        assert static.data_ptr() != kept[name].data_ptr(), f"{name}: the static output itself was returned"
        static.view(torch.uint8).fill_(0xFF)  # NaN in fp16 / fp32: the replay must rewrite every element
    _check(kept, base, truth, inputs["attention_mask"], torch.float16, "output returned before the poisoning")
    inputs = _inputs(rng, 2, 33)
    got, base, truth = _call_all(models, inputs)
    _check(got, base, truth, inputs["attention_mask"], torch.float16, "replay after poisoning")
    assert cache.replays == 2


@pytest.mark.parametrize("bad", ["left", "holes"])
def test_mask_a_graph_cannot_express_gives_hfs_answer(cuda_ops, bad):
    models = _models(BertModel, torch.float32)
    cache = _cache(models[0])
    rng = random.Random(f"{SEED}-{bad}")
    for _ in range(2):
        _call_all(models, _inputs(rng, 3, 20))
    assert cache.captures == 1
    inputs = _inputs(rng, 3, 20, side="left" if bad == "left" else "right")
    if bad == "left":
        inputs["attention_mask"][0, :3] = 0  # at least one row really left-padded
    else:
        full = int(inputs["attention_mask"].sum(-1).argmax())
        inputs["attention_mask"][full, 5] = 0  # a hole in the full row
    got, base, truth = _call_all(models, inputs)
    _check(got, base, truth, inputs["attention_mask"], torch.float32, f"{bad} mask on a captured shape")
    assert (cache.replays, cache.fallbacks) == (2, 1), (cache.replays, cache.fallbacks)
    inputs = _inputs(rng, 3, 20)  # right padding again: replayed, no fallback
    got, base, truth = _call_all(models, inputs)
    _check(got, base, truth, inputs["attention_mask"], torch.float32, "right padding after the fallback")
    assert (cache.replays, cache.fallbacks, cache.captures) == (3, 1, 1)


def test_half_after_capture_does_not_replay_a_stale_graph(cuda_ops):
    model, hf32, _ = _models(BertForMaskedLM, torch.float32)
    cache = _cache(model)
    rng = random.Random(f"{SEED}-half")
    for _ in range(2):
        _call_all([model], _inputs(rng, 2, 30))
    assert cache.captures == 1
    model.half()
    hf16 = copy.deepcopy(hf32).half()
    replays = cache.replays
    for call in range(4):
        inputs = _inputs(rng, 2, 30)
        got, base, truth = _call_all([model, hf16, hf32], inputs)
        _check(got, base, truth, inputs["attention_mask"], torch.float16, f"call {call + 1} after half()")
        if call == 0:
            assert cache.replays == replays, "the fp32 graph replayed after model.half()"
            assert len(cache) == 0, "the fp32 graph is still held"
    assert cache.captures == 2 and cache.replays > replays


def test_large_small_output_calls_take_a_graph_at_the_defaults(cuda_ops):
    """BertModel above MODEL_MAX_TOKENS (10 x 512 = 5120 tokens), default settings: the mask is read first, the
    graph packs to a capacity and replays for fresh batches of the same capacity; left padding runs eagerly."""
    models = _models(BertModel, torch.float16)
    cache = _cache(models[0])
    assert cache.read_min_tokens <= 10 * 512 <= cache.max_tokens, (cache.read_min_tokens, cache.max_tokens)
    rng = random.Random(f"{SEED}-large")
    inner = models[0].base_model.encoder._eet_encoder.graphs
    for call, (side, expected) in enumerate([("right", (0, 0, 0)), ("right", (1, 1, 0)), ("right", (1, 2, 0)),
                                             ("left", (1, 2, 1))]):
        lengths = [512] * 5 + [rng.randint(200, 255) for _ in range(5)]  # 3560..3835 real tokens: capacity 3840
        pos, n = torch.arange(512).view(1, -1), torch.tensor(lengths).view(-1, 1)
        mask = ((pos >= 512 - n) if side == "left" else (pos < n)).long()
        gen = torch.Generator().manual_seed(rng.randrange(1 << 31))
        inputs = {"input_ids": (torch.randint(1, VOCAB, (10, 512), generator=gen) * mask).cuda(),
                  "attention_mask": mask.cuda()}
        got, base, truth = _call_all(models, inputs)
        _check(got, base, truth, inputs["attention_mask"], torch.float16, f"call {call + 1} ({side})")
        assert (cache.captures, cache.replays, cache.fallbacks) == expected, (call, cache.captures, cache.replays,
                                                                              cache.fallbacks)
    assert [key[-2] for key in cache._entries] == [3840], list(cache._entries)
    assert inner.replays == 0  # the replays were the whole model's, not the encoder's own graphs'

@pytest.mark.parametrize("batch,lengths", [(4, (33, 40, 47, 35, 48)), (40, (100, 107, 112, 99))],
                         ids=["small", "read-first"])
def test_lengths_of_a_bucket_share_one_graph(cuda_ops, batch, lengths):
    """sentence-transformers pads each batch to its own longest sentence: calls of 33..48 tokens per row take one
    graph of 48 (97..112: one of 112, above MODEL_MAX_TOKENS, so the mask is read first and the rows packed), their
    outputs cut back to their own length, with HF's values."""
    models = _models(BertModel, torch.float16)
    cache = _cache(models[0])
    rng = random.Random(f"{SEED}-bucket-{batch}")
    for call, seq in enumerate(lengths):
        inputs = _inputs(rng, batch, seq)
        if batch == 40:  # every row full: 3960..4480 real tokens, one capacity (4480) for all of them
            inputs["attention_mask"].fill_(1)
        got, base, truth = _call_all(models, inputs)
        assert got.last_hidden_state.shape == base.last_hidden_state.shape
        _check(got, base, truth, inputs["attention_mask"], torch.float16, f"call {call + 1} ({seq} tokens per row)")
    assert (cache.captures, cache.replays, len(cache)) == (1, len(lengths) - 1, 1), (cache.captures, cache.replays)


def test_graph_count_is_bounded(cuda_ops):
    models = _models(BertModel, torch.float16)
    cache = _cache(models[0])
    cache.max_graphs = 2
    rng = random.Random(f"{SEED}-lru")
    for seq in (16, 32, 48, 64, 16):  # four graph lengths (multiples of 16: model_graphs pads up to them)
        for _ in range(2):
            inputs = _inputs(rng, 2, seq)
            got, base, truth = _call_all(models, inputs)
            _check(got, base, truth, inputs["attention_mask"], torch.float16, f"seq {seq}")
        assert len(cache) <= 2, len(cache)
    assert cache.captures == 5  # 16 was evicted by 32 and captured again
    big = _inputs(rng, cache.max_tokens // 512 + 1, 512)  # over the token budget: never captured
    for _ in range(3):
        _call_all(models, big)
    assert cache.captures == 5


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
def test_replayed_forward_syncs_at_most_once(cuda_ops, with_mask):
    """A replay reads back only the right-padding flag (when a mask is given): no other host sync."""
    model = _models(BertModel, torch.float16)[0]
    cache = _cache(model)
    rng = random.Random(f"{SEED}-sync")
    inputs = _inputs(rng, 1, 128)
    if not with_mask:
        inputs = {"input_ids": inputs["input_ids"]}
    for _ in range(2):
        _call_all([model], inputs)
    torch.cuda.synchronize()
    before = cache.replays  # the capturing call replays too (capture records, the replay computes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _call_all([model], inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # torch's one-time notice that sync debug mode is a prototype is not a sync.
    syncs = [w for w in caught if "synchroniz" in str(w.message) and "prototype feature" not in str(w.message)]
    assert cache.replays == before + 1
    assert len(syncs) == (1 if with_mask else 0), [str(w.message)[:120] for w in syncs]
