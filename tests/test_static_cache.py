"""HF's static-cache generate (and its compiled forward) on accelerated models.

With a compileable cache, HF's generate builds the step's mask with the model's mask function (eet's: SeqBounds)
before the forward and passes it in as `attention_mask`; the model then read `attention_mask.ndim` and crashed
(`'SeqBounds' object has no attribute 'ndim'`, GPT-2, Llama, OPT). Now the prepared bounds flow through to eet's
attention, and the tokens are HF's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.backends.debugging import aot_eager
from transformers import BertModel, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM
from transformers.generation import CompileConfig

import eet_hf
from eet_hf import attention as eet_attention
from eet_hf import ops
from eet_hf.bounds import from_padding_mask

from .helpers import bert_config, count_calls, gpt2_config

SPECIALS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=100, max_position_embeddings=128)
MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(gpt2_config()),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, **SPECIALS)),
    "opt": lambda: OPTForCausalLM(OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                            word_embed_proj_dim=64, **SPECIALS)),
}
GREEDY = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)


def _prompt() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(7, 100, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding: the bounds carry it
    return ids.masked_fill(mask == 0, 0), mask


@pytest.fixture
def attention_calls(monkeypatch) -> list[int]:
    """Counts eet attention kernel calls (the op behind eet's attention function)."""
    return count_calls(monkeypatch, ops, "attention")


@pytest.mark.parametrize("family", sorted(MODELS))
def test_static_cache_generate_gives_hf_tokens(family, attention_calls):
    plain = MODELS[family]().eval()
    accelerated = eet_hf.accelerate(copy.deepcopy(plain))
    ids, mask = _prompt()
    expected = plain.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY)
    got = accelerated.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY)
    assert torch.equal(got, expected)
    assert attention_calls, "eet's attention did not run: the static path fell back to HF attention"


@pytest.mark.parametrize("family", sorted(MODELS))
def test_compiled_forward_static_cache_generate_gives_hf_tokens(family):
    """HF's compiled decode step (fullgraph, the static-cache compile path HF takes on GPUs) with eet's forwards:
    one graph for every step, eet's ops inside it, HF's tokens. aot_eager traces what inductor would compile.
    An accelerated BERT in the process first: its weight-signature hooks on module registration must not become
    guards of other models' compiled forwards (they recompiled Llama at every step)."""
    eet_hf.accelerate(BertModel(bert_config()).eval())
    plain = MODELS[family]().eval()
    accelerated = eet_hf.accelerate(copy.deepcopy(plain))
    ids, mask = _prompt()
    expected = plain.generate(ids, attention_mask=mask, **GREEDY)
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs, **options):  # options: HF's mode="reduce-overhead"
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    config = CompileConfig(fullgraph=True, dynamic=False, backend=backend)
    config._compile_all_devices = True  # HF compiles the forward only on accelerators unless told to
    torch._dynamo.reset()
    try:
        got = accelerated.generate(ids, attention_mask=mask, cache_implementation="static", compile_config=config,
                                   **GREEDY)
    finally:
        torch._dynamo.reset()
    assert torch.equal(got, expected)
    assert len(graphs) == 1, f"{len(graphs)} graphs compiled: the decode steps recompiled"
    targets = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    assert any(t.startswith("eet.attention") for t in targets), "eet's attention is not in the compiled step"


def test_bounds_describe_the_4d_mask_they_stand_for():
    """HF code that asks a prepared mask for ndim / shape gets the 4-D mask's answers."""
    padding = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    bounds = from_padding_mask(padding, 2, 1, 4, 3, 0, True, torch.device("cpu"))
    assert bounds.ndim == bounds.dim() == 4
    assert bounds.shape == torch.Size((2, 1, 1, 4)) == bounds.dense_mask().shape


def test_prepared_bounds_pass_through_eet_mask_and_mismatches_raise():
    bounds = from_padding_mask(None, 2, 3, 5, 2, 0, True, torch.device("cpu"))
    assert eet_attention.eet_mask(2, 3, 5, attention_mask=bounds) is bounds
    with pytest.raises(ValueError, match="prepared eet mask for 3 queries and 5 keys"):
        eet_attention.eet_mask(2, 1, 6, attention_mask=bounds)
