"""explain() says what runs on the model's device: CUDA graphs (the decode loop's, BERT's whole-model ones) count as
accelerated only on CUDA; on CPU they are listed apart with what runs instead (issue 30 item 9)."""

from __future__ import annotations

import re

from transformers import BertForSequenceClassification, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import eet_hf
from eet_hf.report import Report

from .helpers import bert_config, gpt2_config

GENERATE = "generate (eet decode loop, CUDA graphs)"
BERT_GRAPHS = "<model>: whole-model CUDA graphs"


def _cpu_report(model):
    eet_hf.accelerate(model.eval())
    report = eet_hf.explain(model)
    assert report.device == "cpu" and report.accelerated
    assert not [p for p in report.accelerated if "CUDA" in p], report.accelerated
    assert "on cpu eet runs its PyTorch reference ops" in str(report)
    return report


def test_gpt2_decode_loop_graphs_are_not_accelerated_on_cpu():
    report = _cpu_report(GPT2LMHeadModel(gpt2_config()))
    assert report.not_here() == {GENERATE: "eet's decode loop, one eager step per token"}
    assert re.search(rf"{re.escape(GENERATE)} +CUDA only \(on cpu: eet's decode loop", str(report))  # columns padded


def test_generic_decoder_decode_loop_graphs_are_not_accelerated_on_cpu():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    assert GENERATE in _cpu_report(LlamaForCausalLM(config)).not_here()


def test_bert_whole_model_graphs_are_not_accelerated_on_cpu():
    report = _cpu_report(BertForSequenceClassification(bert_config()))
    assert BERT_GRAPHS in report.not_here() and "bert.encoder" in report.accelerated  # packed encoder: runs on CPU
    assert "CUDA only (on cpu: the model's own forward" in str(report)


def test_the_same_parts_count_on_cuda():
    """The view logic for a CUDA model, without a GPU (tests/gpu/test_explain_cuda.py checks a real one)."""
    report = Report("gpt2", "cuda", accelerated=["transformer.h.0"])
    report.add_cuda_only(GENERATE, "eet's decode loop, one eager step per token")
    on_cuda, on_cpu = report.on_device("cuda"), report.on_device("cpu")
    assert on_cuda.accelerated == ["transformer.h.0", GENERATE] and not on_cuda.not_here()
    assert "CUDA only" not in str(on_cuda) and "reference ops" not in str(on_cuda)
    assert on_cpu.accelerated == ["transformer.h.0"] and list(on_cpu.not_here()) == [GENERATE]
    assert report.accelerated == ["transformer.h.0", GENERATE]  # the views are copies


def test_explain_follows_the_model_between_calls():
    """The report is a view made at each explain() call, so a later fallback (first-call checks) still shows."""
    model = GPT2LMHeadModel(gpt2_config()).eval()
    eet_hf.accelerate(model)
    first = eet_hf.explain(model)
    first.accelerated.clear()
    assert eet_hf.explain(model).accelerated and GENERATE in eet_hf.explain(model).cuda_only
