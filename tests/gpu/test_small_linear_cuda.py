"""eet::small_linear on the GPU: random decode-step shapes (rows 1-8, odd K and N, strided x, fp32/fp16/bf16, bias or
none, 'none' or fused gelu_new) against a float64 reference, held to at most twice torch.addmm's error in the same
dtype plus one ulp; the output allocation poisoned with NaN first; bit-identical repeated calls (split-K order is
fixed); planned cluster split counts 1..8 and K longer than one staged chunk per block; CUDA graph capture and replay
with new inputs; a chain of PDL-launched kernels in a graph equal to the same chain run with a full synchronization
between kernels; bad arguments raising instead of crashing."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.activations import NewGELUActivation

from .conftest import QUICK, poison_next_alloc, quick_sample

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [1, 7, 768, 769, 1000, 1600, 2304, 3072, 5125, 6400]
QUICK_SIZES = [1, 7, 64, 769, 1000]


def _cases(count: int) -> list[tuple]:
    rng = random.Random(11)
    sizes = QUICK_SIZES if QUICK else SIZES
    cases = []
    for i in range(count):
        rows, k, n = rng.randint(1, 8), rng.choice(sizes), rng.choice(sizes)
        act = rng.choice(["none", "tanh_staged"])
        cases.append((DTYPES[i % 3], rows, k, n, rng.random() < 0.75, act, rng.random() < 0.3))
    return cases


def _inputs(dtype, rows, k, n, bias, strided, seed=0):
    """x [rows, k] (a column slice of a [rows, k + 5] tensor when strided: row stride k + 5, an unaligned start),
    w [k, n] scaled so outputs stay O(1), b [n] or None."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    if strided:
        x = torch.randn(rows, k + 5, device="cuda", generator=g).to(dtype)[:, 3 : 3 + k]
    else:
        x = torch.randn(rows, k, device="cuda", generator=g).to(dtype)
    w = (torch.randn(k, n, device="cuda", generator=g) / k**0.5).to(dtype)
    b = torch.randn(n, device="cuda", generator=g).to(dtype) if bias else None
    return x, w, b


def _float64_reference(x, w, b, act):
    h = x.double() @ w.double() + (0.0 if b is None else b.double())
    return NewGELUActivation()(h) if act == "tanh_staged" else h


def _torch_same_dtype(x, w, b, act):
    """What HF computes in the same dtype: Conv1D (addmm), then NewGELUActivation op by op."""
    h = torch.addmm(b, x, w) if b is not None else x @ w
    return NewGELUActivation()(h) if act == "tanh_staged" else h


def _torch_error(x, w, b, act, ref) -> float:
    return (_torch_same_dtype(x, w, b, act).double() - ref).abs().max().item()


def _torch_error_probe(x, act) -> float:
    """torch's error at this K and dtype measured over 256 more columns: with N = 1 or 7 the case's own few outputs
    give a noisy maximum (in fp32 the accumulation error, not the output rounding, dominates)."""
    g = torch.Generator(device="cuda").manual_seed(99)
    w = (torch.randn(x.shape[1], 256, device="cuda", generator=g) / x.shape[1] ** 0.5).to(x.dtype)
    return _torch_error(x, w, None, act, _float64_reference(x, w, None, act))


@pytest.mark.parametrize("case", quick_sample(_cases(120), 16))
def test_small_linear_matches_float64_within_twice_torch_error(cuda_ops, case):
    dtype, rows, k, n, bias, act, strided = case
    x, w, b = _inputs(dtype, rows, k, n, bias, strided)
    ref = _float64_reference(x, w, b, act)
    torch_err = max(_torch_error(x, w, b, act, ref), _torch_error_probe(x, act))
    poison_next_alloc(rows * n, dtype)
    out = torch.ops.eet.small_linear(x, w, b, act)
    assert out.shape == (rows, n) and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all(), f"unwritten (NaN) or non-finite outputs: {case}"
    err = (out.double() - ref).abs().max().item()
    ulp = torch.finfo(dtype).eps * max(ref.abs().max().item(), torch.finfo(dtype).tiny)
    assert err <= 2 * torch_err + ulp, f"{case}: max error {err:.3g}, torch's {torch_err:.3g}, ulp {ulp:.3g}"


@pytest.mark.parametrize("shape", [(1, 768, 2304), (8, 3072, 768), (3, 6400, 1600), (5, 5125, 7)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_linear_is_deterministic(cuda_ops, shape, dtype):
    """Split-K shapes included: the cluster's blocks sum the partials in split order, whatever order they finish in."""
    rows, k, n = shape
    x, w, b = _inputs(dtype, rows, k, n, True, False)
    first = torch.ops.eet.small_linear(x, w, b, "tanh_staged")
    for _ in range(3):
        assert torch.equal(torch.ops.eet.small_linear(x, w, b, "tanh_staged"), first)


def _plan_splits(k: int, n: int, dtype) -> int:
    """The split count small_linear_plan (csrc/small_linear.cu) asks for on this GPU, mirrored: one wave of 2 blocks
    per SM over 64-column tiles (32 in fp32), at most 8 (a portable cluster), none under 64 rows. The launcher may
    then narrow it to the widest cluster the device holds in one wave (cluster_fit.h), e.g. 7 -> 6 for n = 2304."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = -(-n // (32 if dtype == torch.float32 else 64))
    splits = max(1, min(2 * sms // tiles, max(k // 64, 1), 8))
    chunk = -(-k // splits)
    return -(-k // chunk)


# (k, n) chosen per split count on a 132-SM H200 (fp16): N sets the tiles, K the rows per split; K = 12288 and 20000
# give splits longer than one staged x chunk (1024 rows), so the staging loop runs more than once.
_SPLIT_SHAPES = [(768, 50304), (768, 8448), (768, 5632), (768, 4224), (768, 3200), (768, 2816), (768, 2304),
                 (768, 768), (12288, 64), (20000, 7), (100, 100)]


@pytest.mark.parametrize("k,n", _SPLIT_SHAPES)
@pytest.mark.parametrize("rows", [1, 8])
def test_small_linear_every_split_count(cuda_ops, k, n, rows):
    """Split counts 1..8 as planned (printed; the launch may narrow a wide one to what fits in one wave, so not every
    width is certain to launch) and multi-chunk staging, against the float64 reference within twice torch's error,
    poisoned output, bit-identical on repeat."""
    dtype = torch.float16
    x, w, b = _inputs(dtype, rows, k, n, True, False, seed=k + n)
    print("splits", _plan_splits(k, n, dtype))
    ref = _float64_reference(x, w, b, "none")
    torch_err = max(_torch_error(x, w, b, "none", ref), _torch_error_probe(x, "none"))
    poison_next_alloc(rows * n, dtype)
    out = torch.ops.eet.small_linear(x, w, b, "none")
    assert torch.isfinite(out).all(), (k, n, rows)
    err = (out.double() - ref).abs().max().item()
    ulp = torch.finfo(dtype).eps * ref.abs().max().item()
    assert err <= 2 * torch_err + ulp, f"{(k, n, rows)}: max error {err:.3g}, torch's {torch_err:.3g}"
    assert torch.equal(torch.ops.eet.small_linear(x, w, b, "none"), out)


def test_split_shapes_cover_every_cluster_size():
    """The table above really asks for splits 1..8 on this GPU (else the test above proves less than it says)."""
    if torch.cuda.get_device_properties(0).multi_processor_count != 132:
        pytest.skip("the shapes are chosen for a 132-SM GPU")
    assert {_plan_splits(k, n, torch.float16) for k, n in _SPLIT_SHAPES} == set(range(1, 9))


def test_pdl_chain_in_graph_equals_synchronized_chain(cuda_ops):
    """Programmatic dependent launch lets each kernel start before the previous one ends (common.cuh): a chain
    embedding -> layer_norm -> small_linear -> kv_append -> add_layer_norm -> small_linear(gelu) -> small_linear,
    captured in one graph and replayed with new tokens, must give the bits of the same chain run op by op with a
    device synchronization after every kernel (where no overlap is possible)."""
    dev = dict(device="cuda", dtype=torch.float16)
    g = torch.Generator(device="cuda").manual_seed(5)
    hidden, heads, vocab = 768, 12, 1000
    wte = torch.randn(vocab, hidden, generator=g, device="cuda").to(torch.float16)
    wpe = torch.randn(64, hidden, generator=g, device="cuda").to(torch.float16)
    ln_w, ln_b = torch.rand(hidden, **dev) + 0.5, torch.randn(hidden, **dev)
    w_qkv, b_qkv = (torch.randn(hidden, 3 * hidden, generator=g, device="cuda") / 28).half(), torch.randn(3 * hidden, **dev)
    w_up, b_up = (torch.randn(hidden, 4 * hidden, generator=g, device="cuda") / 28).half(), torch.randn(4 * hidden, **dev)
    w_dn, b_dn = (torch.randn(4 * hidden, hidden, generator=g, device="cuda") / 55).half(), torch.randn(hidden, **dev)
    k_cache = torch.zeros(1, heads, 16, hidden // heads, **dev)
    v_cache = torch.zeros_like(k_cache)
    write_pos = torch.tensor([3], device="cuda", dtype=torch.int32)
    positions = torch.tensor([[3]], device="cuda")

    def chain(tokens, sync):
        def step(value):  # called right after each op is enqueued: with sync, it has finished before the next starts
            if sync:
                torch.cuda.synchronize()
            return value

        h = step(cuda_ops.embedding(tokens, positions, wte, wpe).view(1, hidden))
        normed = step(cuda_ops.layer_norm(h, ln_w, ln_b, 1e-5))
        qkv = step(torch.ops.eet.small_linear(normed, w_qkv, b_qkv, "none"))
        q = step(cuda_ops.kv_append(qkv.view(1, 1, -1), None, k_cache, v_cache, write_pos, heads, heads))
        normed2, h2 = cuda_ops.add_layer_norm(q.reshape(1, hidden), h, ln_w, ln_b, 1e-5)
        step(normed2)
        up = step(torch.ops.eet.small_linear(normed2, w_up, b_up, "tanh_staged"))
        out = step(torch.ops.eet.small_linear(up, w_dn, b_dn, "none"))
        return out + h2, k_cache.clone(), v_cache.clone()

    static_tokens = torch.tensor([[7]], device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(static_tokens, sync=False)  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = chain(static_tokens, sync=False)
    for token in (11, 523, 999):
        static_tokens.fill_(token)
        k_cache.zero_(), v_cache.zero_()
        graph.replay()
        got = [t.clone() for t in static_out]
        k_cache.zero_(), v_cache.zero_()
        want = chain(torch.tensor([[token]], device="cuda"), sync=True)
        for a, b in zip(got, want):
            assert torch.equal(a, b), token


def test_small_linear_gelu_equals_bias_gelu_of_its_linear(cuda_ops):
    """The fused epilogue applies the same staged gelu_new as bias_gelu's 'tanh_staged' (shared device function)."""
    x, w, b = _inputs(torch.bfloat16, 4, 768, 3072, True, False)
    linear = torch.ops.eet.small_linear(x, w, b, "none")
    assert torch.equal(torch.ops.eet.small_linear(x, w, b, "tanh_staged"), cuda_ops.bias_gelu(linear, None, "tanh_staged"))


@pytest.mark.parametrize("shape", [(1, 768, 2304), (4, 3072, 768), (8, 7, 769)])
def test_small_linear_graph_capture_and_replay(cuda_ops, shape):
    """Captured with no eager call first on the capture stream (the cluster and PDL launch attributes are recorded by
    the capture), then replayed twice on new inputs: the same bits as eager calls on those inputs."""
    rows, k, n = shape
    x, w, b = _inputs(torch.float16, rows, k, n, True, False)
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = torch.ops.eet.small_linear(static_x, w, b, "tanh_staged")
    for seed in (1, 2):
        new_x = _inputs(torch.float16, rows, k, n, False, False, seed=seed)[0]
        static_x.copy_(new_x)
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, torch.ops.eet.small_linear(new_x, w, b, "tanh_staged")), seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(cuda_ops, dtype):
    dev = dict(device="cuda", dtype=dtype)
    args = (torch.randn(3, 40, **dev), torch.randn(40, 24, **dev), torch.randn(24, **dev), "tanh_staged")
    torch.library.opcheck(torch.ops.eet.small_linear.default, args)


_RAW_ERROR_SCRIPT = """
import sys, torch, eet_hf.ops as o
assert o.ensure_loaded()
f16 = dict(device="cuda", dtype=torch.float16)
sl = torch.ops.eet.small_linear
calls = {
    "rows": lambda: sl(torch.randn(9, 64, **f16), torch.randn(64, 32, **f16), None, "none"),
    "k": lambda: sl(torch.randn(2, 64, **f16), torch.randn(63, 32, **f16), None, "none"),
    "dtype": lambda: sl(torch.randn(2, 64, **f16), torch.randn(64, 32, device="cuda"), None, "none"),
    "bias": lambda: sl(torch.randn(2, 64, **f16), torch.randn(64, 32, **f16), torch.randn(31, **f16), "none"),
    "activation": lambda: sl(torch.randn(2, 64, **f16), torch.randn(64, 32, **f16), None, "relu"),
    "layout": lambda: sl(torch.randn(64, 2, **f16).t(), torch.randn(64, 32, **f16), None, "none"),
}
try:
    calls[sys.argv[1]]()
except RuntimeError as error:
    print("raised:", str(error).splitlines()[0])
"""


@pytest.mark.parametrize("bad", ["rows", "k", "dtype", "bias", "activation", "layout"])
def test_raw_op_argument_error_raises_without_crashing(cuda_ops, bad):
    """torch.ops.eet.small_linear with bad arguments: a RuntimeError naming the problem, never a dead process
    (a subprocess, so that a crash fails this test instead of the whole run)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _RAW_ERROR_SCRIPT, bad], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "raised: eet::small_linear" in done.stdout, (
        done.returncode, done.stdout[-500:], done.stderr[-1500:],
    )


def test_engine_rule_uses_small_linear_at_batch_1_only(cuda_ops, monkeypatch):
    """The measured rule (gpt2_forward._use_small): decode steps of one row run every Conv1D whose weight has at most
    4M elements on small_linear, 8 rows never. The lean GPT-2 forward serves GPT-2s the fused step refuses (here
    per-layer attention scales); the others run the fused step (test_fused_gpt2_cuda.py)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import eet_hf
    from eet_hf.engine import gpt2_forward

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, n_positions=128, n_embd=256, n_layer=2, n_head=4, pad_token_id=0,
                        scale_attn_by_inverse_layer_idx=True)
    calls = []
    real = gpt2_forward.ops.small_linear
    monkeypatch.setattr(gpt2_forward.ops, "small_linear", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    model = eet_hf.accelerate(GPT2LMHeadModel(config).to("cuda", torch.float16).eval())
    assert "scale_attn_by_inverse_layer_idx" in eet_hf.explain(model).fallbacks["decoder step"]
    ids = torch.randint(1, 1000, (8, 12), device="cuda")
    kwargs = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), **kwargs)
        assert calls and set(calls) == {1}, calls[:8]
        calls.clear()
        model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert not calls, "8 rows: the rule keeps cuBLAS"
