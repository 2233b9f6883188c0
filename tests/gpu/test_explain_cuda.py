"""explain() on CUDA: the CUDA-graph parts (decode loop, BERT's whole-model graphs) are listed as accelerated
(on CPU they are listed apart: tests/test_explain_device.py)."""

from __future__ import annotations

from transformers import BertForSequenceClassification, GPT2LMHeadModel

import eet_hf

from ..helpers import bert_config, gpt2_config


def test_cuda_graph_parts_are_accelerated_on_cuda(cuda_ops):
    for model, label in ((GPT2LMHeadModel(gpt2_config()), "generate (eet decode loop, CUDA graphs)"),
                         (BertForSequenceClassification(bert_config()), "<model>: whole-model CUDA graphs")):
        eet_hf.accelerate(model.cuda().eval())
        report = eet_hf.explain(model)
        assert report.device == "cuda" and report.kernels == "cuda"
        assert label in report.accelerated and not report.not_here()
        assert "CUDA only" not in str(report) and "reference ops" not in str(report)
