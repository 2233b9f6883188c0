"""Gradients through eet: every functional op has a backward (the reference's), and an accelerated model's
gradients equal the plain model's, in eval mode under torch.enable_grad() and in train mode with dropout 0.

Before eet's ops had an Autograd kernel, backward() warned "an autograd kernel was not registered" and
gradients through the BERT encoder's packed Q/K/V weights were lost (None).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import eet_hf
from eet_hf import ops
from eet_hf.ops import _library, reference
from eet_hf.ops.autograd import NOT_DIFFERENTIABLE

from .helpers import bert_config, gpt2_config
from .test_ops import OPCHECK_INPUTS

MISSING_AUTOGRAD = "autograd kernel was not registered"
# kv_append mutates the caches (its own rule); argmax_rows and the mask bookkeeping ops return indices and flags,
# which have no gradient.
FUNCTIONAL = sorted(name for name in _library.SCHEMAS if name not in ("kv_append", *NOT_DIFFERENTIABLE))


def _with_grad(args: tuple) -> list:
    return [a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def _differentiable(args: list) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_opcheck_with_grad(name):
    """Autograd registration, and the backward under AOT dispatch with dynamic shapes (torch.compile's path)."""
    torch.library.opcheck(getattr(torch.ops.eet, name).default, _with_grad(OPCHECK_INPUTS[name]()))


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_op_gradient_is_the_reference_gradient(name):
    """The op's gradients equal plain autograd through its reference implementation, without any warning."""
    args = _with_grad(OPCHECK_INPUTS[name]())
    if name == "rotary":  # also differentiate through cos / sin (the op receives them as inputs)
        args[2].requires_grad_(), args[3].requires_grad_()
    leaves = _differentiable(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = getattr(torch.ops.eet, name)(*args)
        outs = out if isinstance(out, tuple) else (out,)
        weights = [torch.randn_like(o) for o in outs]
        got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), leaves)
    assert not [w for w in caught if MISSING_AUTOGRAD in str(w.message)]
    ref_args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
    ref_out = getattr(reference, name)(*ref_args)
    ref_outs = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    expected = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref_outs, weights)), _differentiable(ref_args))
    for g, e in zip(got, expected):
        # fp32 math in both, possibly in another summation order (attention_varlen's masked form): 1e-5 relative.
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


def test_varlen_masked_form_equals_the_per_sequence_reference():
    """attention_varlen's backward differentiates its masked form; both forms must be the same function."""
    q, k, v = torch.randn(12, 4, 8), torch.randn(12, 2, 8), torch.randn(12, 2, 8)
    cu = torch.tensor([0, 5, 5, 6, 12], dtype=torch.int32)  # an empty and a one-token sequence included
    for causal in (False, True):
        torch.testing.assert_close(
            reference.attention_varlen_masked(q, k, v, cu, 6, causal, 0.3),
            reference.attention_varlen(q, k, v, cu, 6, causal, 0.3), rtol=1e-6, atol=1e-6,
        )


def test_layer_norm_second_derivative_matches_torch():
    """create_graph=True: the recomputed reference is recorded, so a gradient of the gradient is right."""
    x, w, b = (torch.randn(5, 16, dtype=torch.float64), torch.randn(16, dtype=torch.float64),
               torch.randn(16, dtype=torch.float64))
    probe = torch.randn(5, 16, dtype=torch.float64)

    def hvp(norm) -> torch.Tensor:
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad((norm(xr) * probe).sum(), xr, create_graph=True)
        (hx,) = torch.autograd.grad((gx * probe).sum(), xr)
        return hx

    got = hvp(lambda t: ops.layer_norm(t, w, b, 1e-5))
    expected = hvp(lambda t: F.layer_norm(t, (16,), w, b, 1e-5))
    # The reference computes in fp32 (reference.py), hence fp32's tolerance on float64 inputs.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_kv_append_refuses_gradients_clearly():
    qkv, bias, k_cache, v_cache, pos, heads_q, heads_kv = OPCHECK_INPUTS["kv_append"]()
    with pytest.raises(RuntimeError, match="kv_append .* has no backward.*torch.no_grad"):
        torch.ops.eet.kv_append(qkv.requires_grad_(), bias, k_cache, v_cache, pos, heads_q, heads_kv)
    with torch.no_grad():  # the decode loop's way: runs, writes the cache
        q = ops.kv_append(qkv, bias, k_cache, v_cache, pos, heads_q, heads_kv)
    assert q.shape == (2, heads_q, 3, 8) and k_cache.abs().sum() > 0


def test_ops_without_grad_mode_record_nothing():
    """Under no_grad the wrappers step past the Autograd kernel: results carry no graph, values unchanged."""
    x, w, b = torch.randn(3, 8, requires_grad=True), torch.randn(8), torch.randn(8)
    with torch.no_grad():
        out = ops.layer_norm(x, w, b, 1e-5)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, reference.layer_norm(x.detach(), w, b, 1e-5), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Whole models: gradients w.r.t. every parameter and inputs_embeds equal HF's.


def _llama_config(**overrides) -> LlamaConfig:
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, pad_token_id=0)
    return LlamaConfig(**{**base, **overrides})


MODELS = {  # family -> (class, config); dropout 0 so that train mode is deterministic
    "gpt2": (GPT2LMHeadModel, lambda **kw: gpt2_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)),
    "bert": (BertModel, lambda **kw: bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)),
    "llama": (LlamaForCausalLM, _llama_config),
}


def _eet_nodes(loss: torch.Tensor) -> set[str]:
    """The eet ops whose backward the autograd graph of `loss` holds."""
    seen, found, todo = set(), set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "GeneratedBackwardFor_eet_" in type(node).__name__:
            found.add(type(node).__name__.split("GeneratedBackwardFor_eet_")[1].rsplit("_default", 1)[0])
        todo.extend(next_node for next_node, _ in node.next_functions)
    return found


# The eet ops each forward differentiates through. Train mode runs HF's forwards (patches/_rewire.py
# inference_only), except attention: with dropout 0 the "eet" attention function still runs eet's op.
EET_OPS_IN_GRAPH = {
    ("gpt2", "eval_enable_grad"): {"attention", "layer_norm", "add_layer_norm", "bias_gelu"},
    ("bert", "eval_enable_grad"): {"attention", "add_layer_norm", "bias_gelu"},
    ("llama", "eval_enable_grad"): {"attention", "rms_norm"},
    ("gpt2", "train_dropout0"): {"attention"},
    ("bert", "train_dropout0"): {"attention"},
    ("llama", "train_dropout0"): {"attention"},
}


def _gradients(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
               ops_used: set[str] | None = None) -> dict[str, torch.Tensor]:
    """d loss / d (inputs_embeds, every parameter), for a loss that weights every real token's output; the eet
    ops on the way are added to ops_used."""
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    with torch.enable_grad():
        out = model(inputs_embeds=embeds, attention_mask=mask)
        hidden = out.logits if hasattr(out, "logits") else out.last_hidden_state
        # A fixed, non-uniform weighting (not a sum of squares: a LayerNorm output's is constant), real tokens only.
        weights = torch.linspace(-1.0, 1.5, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        loss = (hidden * weights * mask.unsqueeze(-1).to(hidden.dtype)).sum()
        if ops_used is not None:
            ops_used |= _eet_nodes(loss)
        loss.backward()
    grads = {"inputs_embeds": embeds.grad}
    grads.update({name: p.grad for name, p in model.named_parameters()})
    return grads


def _assert_grads_match(got: dict, expected: dict) -> None:
    scale = max(g.abs().max().item() for g in expected.values() if g is not None)
    for name, e in expected.items():
        g = got[name]
        assert (g is None) == (e is None), f"{name}: gradient {'missing' if g is None else 'unexpected'}"
        if e is None:
            continue
        # fp32 rounding over a few layers (eet's reference computes in fp32 for float64 models too): 1e-5 of the
        # tensor's largest gradient. Gradients that are rounding noise in HF (BERT's key bias: softmax ignores a
        # shift shared by all keys) are held to the same bound against the model's largest gradient.
        bound = 1e-5 * max(e.abs().max().item(), 1e-3 * scale)
        worst = (g - e).abs().max().item()
        assert worst <= bound, f"{name}: max |eet - HF| {worst:.3g} > {bound:.3g}"


def check_model_gradients(family: str, mode: str, dtype: torch.dtype, device: str, **config) -> None:
    """An accelerated copy's gradients equal the plain model's, through eet's ops, with no autograd warning.
    config: overrides of the family's tiny config."""
    model_cls, make_config = MODELS[family]
    plain = model_cls(make_config(**config)).to(device=device, dtype=dtype)
    accelerated = eet_hf.accelerate(copy.deepcopy(plain).eval())
    assert eet_hf.explain(accelerated).accelerated, "nothing was accelerated: the test would compare HF with HF"
    for model in (plain, accelerated):
        model.train(mode == "train_dropout0")
    ids = torch.randint(7, 100, (2, 9), device=device)
    mask = torch.ones(2, 9, dtype=torch.long, device=device)
    mask[1, 6:] = 0  # right padding in one row: eet's bounds path, not only the unpadded one
    with torch.no_grad():  # generic families check eet against HF on a module's first call (which returns HF's)
        accelerated(input_ids=ids, attention_mask=mask)
    expected = _gradients(plain, ids, mask)
    used: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _gradients(accelerated, ids, mask, used)
    assert not [w for w in caught if MISSING_AUTOGRAD in str(w.message)], "an eet op has no autograd kernel"
    expected_ops = EET_OPS_IN_GRAPH[family, mode]
    if dtype == torch.float64:  # generic families fuse norms in fp32 / fp16 / bf16 only (generic_check.py)
        expected_ops = expected_ops - {"rms_norm"}
    assert expected_ops <= used, f"eet ops in the graph: {sorted(used)}"
    _assert_grads_match(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["eval_enable_grad", "train_dropout0"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_model_gradients_equal_hf(family, mode, dtype):
    check_model_gradients(family, mode, dtype, "cpu")
