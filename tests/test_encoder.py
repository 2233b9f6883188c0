"""The padding-free BERT encoder on CPU (reference ops): attention_varlen's reference, every head
and pipeline against HF, the packed QKV weight, routing and restore. (transformers 5.x has no
question-answering pipeline any more; BertForQuestionAnswering's logits are compared with the other heads.)"""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    PreTrainedTokenizerFast,
    pipeline,
)

import eet_hf
from eet_hf import ops
from eet_hf.encoder import packed_qkv
from eet_hf.encoder.packing import capacity_for

from .helpers import WORDS, assert_close, bert_config, padded_batch, pair
from .test_encoder_packing import _bounds

FP32_ATOL = 1e-4  # the project's fp32 logits contract


# ------------------------------------------------------------------------------------------------ attention_varlen


def _dense_varlen(q, k, v, lengths, causal, scale):
    """The same function as one dense masked attention over all tokens: a block-diagonal mask."""
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(q.shape[0])
    visible = seq.view(-1, 1) == seq.view(1, -1)
    if causal:
        visible &= pos.view(1, -1) <= pos.view(-1, 1)
    groups = q.shape[1] // k.shape[1]
    kk, vv = (t.float().repeat_interleave(groups, 1).transpose(0, 1) for t in (k, v))
    scores = (q.float().transpose(0, 1) @ kk.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)
    return (probs @ vv).transpose(0, 1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads_kv", [4, 2])
def test_attention_varlen_reference_matches_dense_mask(causal, heads_kv):
    lengths = [5, 1, 0, 9, 3]
    tokens, heads, dim = sum(lengths), 4, 16
    # q, k, v as views into one packed QKV output [tokens, 3, heads, dim] (k/v use the first heads_kv heads).
    qkv = torch.randn(tokens, 3, heads, dim)
    q, k, v = qkv[:, 0], qkv[:, 1, :heads_kv], qkv[:, 2, :heads_kv]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out = ops.attention_varlen(q, k, v, cu, max(lengths), causal, 0.25)
    assert out.shape == (tokens, heads, dim)
    assert_close(out, _dense_varlen(q, k, v, lengths, causal, 0.25), 1e-5)


def test_attention_varlen_reference_rejects_bad_bounds():
    q = torch.randn(6, 2, 8)
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.attention_varlen(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 6, False, 1.0)
    with pytest.raises(ValueError, match="max_seqlen"):
        ops.attention_varlen(q, q, q, torch.tensor([0, 2, 6], dtype=torch.int32), 3, False, 1.0)


def test_attention_varlen_opcheck():
    qkv = torch.randn(9, 3, 2, 8)
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
    torch.library.opcheck(torch.ops.eet.attention_varlen, (qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 5, False, 0.3))


# ------------------------------------------------------------------------------------------------ models


def _compare(out, expected, mask):
    for key, value in expected.items():
        if not isinstance(value, torch.Tensor):
            continue
        real = None
        if value.dim() >= 2 and value.shape[:2] == mask.shape:
            real = mask.bool().view(*mask.shape, *([1] * (value.dim() - 2)))
        assert_close(out[key], value, FP32_ATOL, where=real)


HEADS = [BertModel, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification,
         BertForQuestionAnswering, BertForNextSentencePrediction, BertForPreTraining]


@pytest.mark.parametrize("head", HEADS, ids=lambda c: c.__name__)
def test_every_head_takes_the_packed_path_and_matches_hf(head, packed_calls):
    model, ref = pair(head, bert_config(num_hidden_layers=3))
    eet_hf.accelerate(model)
    ids, mask = padded_batch(4, 13, [13, 6, 2, 1], "right")
    with torch.no_grad():
        _compare(model(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)
        _compare(model(ids), ref(ids), torch.ones_like(mask))  # no mask: nothing padded
    assert len(packed_calls) == 2


def test_multiple_choice_packed(packed_calls):
    model, ref = pair(BertForMultipleChoice, bert_config())
    eet_hf.accelerate(model)
    ids = torch.randint(7, 100, (2, 3, 8))
    mask = torch.ones_like(ids)
    mask[0, 1, 5:] = 0
    with torch.no_grad():
        assert_close(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, FP32_ATOL)
    assert packed_calls


@pytest.mark.parametrize("capacity", [None, capacity_for(14, 27)], ids=["all-rows", "capacity-16"])
def test_capacity_mode_equals_exact_mode(capacity):
    """The CUDA-graph body (fixed shape, padding as extra segments; all 27 rows or a capacity of 16 for the 14 real
    tokens) gives the exact path's real tokens."""
    model, _ = pair(BertModel, bert_config())
    eet_hf.accelerate(model)
    runtime = model.encoder._eet_encoder
    hidden = torch.randn(3, 9, 64)
    start, end = _bounds([9, 4, 1], 9, "right")
    with torch.no_grad():
        exact = runtime.forward(hidden, _mask_bounds(start, end, 9))
        graph_body = runtime._capacity_forward(hidden, start, end, capacity)
    real = (torch.arange(9).view(1, -1) < end.view(-1, 1)).unsqueeze(-1)
    assert_close(graph_body, exact, 1e-5, where=real)
    assert torch.equal(graph_body * ~real, torch.zeros_like(graph_body))


def _mask_bounds(start, end, seq_len):
    from eet_hf.bounds import SeqBounds

    return SeqBounds(start, end, torch.zeros_like(start), False, seq_len, seq_len)


def test_hidden_states_and_attentions_requests_take_the_layer_path(packed_calls):
    model, ref = pair(BertModel, bert_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(2, 7, [7, 3], "right")
    with torch.no_grad():
        got = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        expected = ref(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert not packed_calls
    real = mask.bool().unsqueeze(-1)
    assert len(got.hidden_states) == len(expected.hidden_states)
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert_close(a, b, FP32_ATOL, where=real)
    for a, b in zip(got.attentions, expected.attentions):
        assert_close(a, b, FP32_ATOL, where=mask.bool().view(2, 1, 7, 1))


def test_left_padding_takes_the_layer_path(packed_calls):
    model, ref = pair(BertModel, bert_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(3, 6, [6, 4, 1], "left")
    with torch.no_grad():
        _compare(model(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)
    assert not packed_calls


@pytest.mark.parametrize("kind", ["decoder", "attention_off"])
def test_not_routed(kind, packed_calls):
    config = bert_config(is_decoder=True) if kind == "decoder" else bert_config()
    model, ref = pair(BertModel, config)
    eet_hf.accelerate(model, attention=kind != "attention_off")
    assert "_eet_encoder" not in model.encoder.__dict__
    ids, mask = padded_batch(2, 6, [6, 3], "right")
    with torch.no_grad():
        _compare(model(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)
    assert not packed_calls


def _qkv(layer):
    attn = layer.attention.self
    return attn.query, attn.key, attn.value


def _storage_bytes(model) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def test_packed_qkv_keeps_state_dict_and_memory():
    model, ref = pair(BertForMaskedLM, bert_config())
    params_before = {name: p for name, p in model.named_parameters()}
    bytes_before = _storage_bytes(model)
    eet_hf.accelerate(model)
    state = model.state_dict()
    assert list(state) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(state[name], value), name
    # Same Parameter objects, now slices of one [3*hidden, hidden] buffer per layer; no second copy.
    assert all(p is params_before[name] for name, p in model.named_parameters())
    for layer in model.bert.encoder.layer:
        weight, bias = packed_qkv(_qkv(layer))
        assert weight.shape == (192, 64) and bias.shape == (192,)
        assert weight.data_ptr() == layer.attention.self.query.weight.data_ptr()
        assert state[f"bert.encoder.layer.{layer.attention.self.layer_idx}.attention.self.value.weight"].data_ptr() \
            == layer.attention.self.value.weight.data_ptr()
    assert _storage_bytes(model) == bytes_before


def test_dtype_move_after_accelerate_repacks(packed_calls):
    model, ref = pair(BertForMaskedLM, bert_config())
    eet_hf.accelerate(model)
    model.double()
    ref.double()
    assert packed_qkv(_qkv(model.bert.encoder.layer[0])) is None  # .double() split them
    ids, mask = padded_batch(2, 6, [6, 3], "right")
    with torch.no_grad():
        _compare(model(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)
    assert packed_calls and packed_qkv(_qkv(model.bert.encoder.layer[0])) is not None


def test_restore_gives_hf_back(packed_calls):
    model, ref = pair(BertForSequenceClassification, bert_config())
    eet_hf.accelerate(model)
    eet_hf.restore(model)
    assert "_eet_encoder" not in model.bert.encoder.__dict__
    ids, mask = padded_batch(3, 6, [6, 3, 1], "right")
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits)
    assert not packed_calls


# ------------------------------------------------------------------------------------------------ pipelines


def _tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over helpers.WORDS with BERT's single and pair templates (question answering)."""
    specials = ["[PAD]", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", mask_token="[MASK]", cls_token="[CLS]",
                                   sep_token="[SEP]", unk_token="[UNK]")


def _same(got, expected, path=""):
    """Equal structure and labels/tokens/spans; floats within 1e-5."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), path
        for key in expected:
            _same(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), path
        for i, (a, b) in enumerate(zip(got, expected)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(expected, float) or getattr(getattr(expected, "dtype", None), "kind", "") == "f":
        assert abs(got - expected) <= 1e-5, f"{path}: {got} vs {expected}"
    else:
        assert got == expected, f"{path}: {got!r} vs {expected!r}"


TEXTS = ["w1 w2 w3 w4", "w5 w6 w7 w8 w9 w10 w11 w12 w13", "w14"]
PIPELINES = [
    ("fill-mask", BertForMaskedLM, {}, ["w1 [MASK] w3", "w4 w5 w6 w7 [MASK] w9 w10"], {"top_k": 5}),
    ("feature-extraction", BertModel, {}, TEXTS, {}),
    ("text-classification", BertForSequenceClassification, {"num_labels": 3}, TEXTS, {"top_k": None}),
    ("token-classification", BertForTokenClassification, {"num_labels": 5}, TEXTS, {}),
]


@pytest.mark.parametrize("task, head, extra, inputs, kwargs", PIPELINES, ids=[p[0] for p in PIPELINES])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_pipelines_identical(task, head, extra, inputs, kwargs, batch_size, packed_calls):
    tok = _tokenizer()
    model, ref = pair(head, bert_config(**extra))
    eet_hf.accelerate(model)
    got = pipeline(task, model=model, tokenizer=tok, batch_size=batch_size)(inputs, **kwargs)
    expected = pipeline(task, model=ref, tokenizer=tok, batch_size=batch_size)(inputs, **kwargs)
    if task == "feature-extraction":
        for text, a, b in zip(inputs, got, expected):
            a, b = torch.tensor(a[0]), torch.tensor(b[0])
            # Batched, HF returns features for the batch's padding positions too; eet returns zeros there
            # (padding is never computed). Real tokens must match.
            n_real = len(tok(text)["input_ids"])
            assert_close(a[:n_real], b[:n_real], FP32_ATOL)
            assert torch.equal(a[n_real:], torch.zeros_like(a[n_real:]))
    else:
        _same(got, expected)
    assert packed_calls


def test_deepcopy_of_accelerated_model_still_runs():
    model, ref = pair(BertModel, bert_config())
    eet_hf.accelerate(model)
    clone = copy.deepcopy(model)
    ids, mask = padded_batch(2, 5, [5, 2], "right")
    with torch.no_grad():
        _compare(clone(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)


def test_encoder_graph_key_follows_replaced_weights():
    """The encoder graphs' weight key reads the current parameters: load_state_dict(assign=True) replaces them,
    and a graph captured on the old ones must not match any more."""
    from transformers import BertModel

    model = eet_hf.accelerate(BertModel(bert_config()).eval())
    runtime = model.encoder.__dict__["_eet_encoder"]
    before = runtime._weights_signature()
    assert before == runtime._weights_signature()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert runtime._weights_signature() != before
