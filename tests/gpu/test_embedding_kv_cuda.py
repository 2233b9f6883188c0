"""CUDA kernels of eet::embedding and eet::kv_append against eet_hf.ops.reference, on fresh random shapes.

Every run draws new shapes (set EET_TEST_SEED to replay one; the seed is in each case's id). Both ops are one
fp32 add and one rounding, so the kernels must match the reference bit for bit. Outputs are allocated over
NaN-poisoned memory (an unwritten element fails), caches are filled with a sentinel and compared whole (a
write outside the slots it should touch fails), and out-of-range ids / slots are part of the random cases.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from eet_hf.ops import reference

from .conftest import QUICK, poison_next_alloc, quick_sample

SEED = int(os.environ.get("EET_TEST_SEED", random.randrange(1 << 31)))
_rng = random.Random(SEED)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INDEX_DTYPES = {"i64": torch.int64, "i32": torch.int32}
SENTINEL = -7.25  # exactly representable in every dtype
MAX_ELEMS = 1 << (16 if QUICK else 22)  # output elements per case

# Hidden sizes the embedding kernel special-cases (1, below a warp, vector multiples or not, one block per
# 256 vectors and folding beyond) plus random ones.
EMB_HIDDENS = [1, 7, 8, 768, 769, 1000, 1600, 5125, 65536] + [_rng.randint(2, 20000) for _ in range(3)]
# (heads_q, heads_kv, head_dim): GPT-2 small / XL, GQA, odd head dims (scalar path), a 65520-wide row.
KV_SHAPES = [(12, 12, 64), (25, 25, 64), (32, 8, 128), (4, 2, 7), (3, 1, 1), (8, 8, 5), (16, 16, 1365), (2, 1, 769)]


def _assert_same(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Bitwise equal, NaN where the reference has NaN; names the first differing element."""
    same = (out == ref) | (out.isnan() & ref.isnan())
    if not same.all():
        idx = (~same).nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int((~same).sum())} elements differ, first at {idx}: "
            f"{out[tuple(idx)].item()} vs {ref[tuple(idx)].item()} (seed {SEED})"
        )


# ------------------------------------------------------------------------------------------------
# embedding


def _embedding_cases():
    cases = []
    for name, dtype in DTYPES.items():
        for hidden in EMB_HIDDENS:
            index = _rng.choice(list(INDEX_DTYPES))
            batch = _rng.choice([1, 3, _rng.randint(1, 16)])
            seq = max(1, min(_rng.choice([1, 7, _rng.randint(1, 600)]), MAX_ELEMS // (hidden * batch)))
            with_wpe = _rng.random() < 0.8
            layout = _rng.choice(["contig", "expanded_pos", "transposed"])
            bad = _rng.random() < 0.4  # some out-of-range ids / positions
            seed = _rng.randrange(1 << 31)
            case_id = f"{name}-{index}-b{batch}-s{seq}-h{hidden}-{'wpe' if with_wpe else 'nowpe'}-{layout}"
            case_id += f"-{'bad' if bad else 'ok'}-s{seed}"
            cases.append(pytest.param(dtype, INDEX_DTYPES[index], batch, seq, hidden, with_wpe, layout, bad, seed,
                                      id=case_id))
    return cases


def _indices(batch: int, seq: int, high: int, dtype: torch.dtype, layout: str, gen: torch.Generator) -> torch.Tensor:
    if layout == "transposed":  # [seq, batch] storage viewed [batch, seq]
        return torch.randint(0, high, (seq, batch), generator=gen, device="cuda", dtype=dtype).t()
    return torch.randint(0, high, (batch, seq), generator=gen, device="cuda", dtype=dtype)


def _spoil(t: torch.Tensor, high: int, rng: random.Random) -> None:
    """Overwrite a few entries with values outside [0, high), including the dtype's extremes."""
    info = torch.iinfo(t.dtype)
    for value in (-1, high, high + 1000, info.min, info.max):
        if rng.random() < 0.6:
            flat = rng.randrange(t.numel())
            t[flat // t.shape[1], flat % t.shape[1]] = value


@pytest.mark.parametrize(
    "dtype, index_dtype, batch, seq, hidden, with_wpe, layout, bad, seed", quick_sample(_embedding_cases(), 8)
)
def test_embedding(cuda_ops, dtype, index_dtype, batch, seq, hidden, with_wpe, layout, bad, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rng = random.Random(seed)
    vocab, positions = rng.randint(1, 5000), rng.randint(1, 2048)
    wte = torch.randn(vocab, hidden, generator=gen, device="cuda").to(dtype)
    wpe = torch.randn(positions, hidden, generator=gen, device="cuda").to(dtype) if with_wpe else None
    ids = _indices(batch, seq, vocab, index_dtype, layout, gen)
    if layout == "expanded_pos":  # HF's position_ids: one [1, seq] row broadcast over the batch (stride 0)
        pos = torch.randint(0, positions, (1, seq), generator=gen, device="cuda", dtype=index_dtype).expand(batch, -1)
    else:
        pos = _indices(batch, seq, positions, index_dtype, layout, gen)
    if bad:
        _spoil(ids, vocab, rng)
        if layout != "expanded_pos":
            _spoil(pos, positions, rng)
    ref = reference.embedding(ids, pos, wte, wpe)
    poison_next_alloc(batch * seq * hidden, dtype)
    out = cuda_ops.embedding(ids, pos, wte, wpe)
    assert out.shape == (batch, seq, hidden) and out.dtype == dtype and out.is_contiguous()
    _assert_same(out, ref, "embedding")
    invalid = (ids < 0) | (ids >= vocab)
    if with_wpe:
        invalid |= (pos < 0) | (pos >= positions)
    assert torch.equal(out.isnan().all(-1), invalid), "NaN rows must be exactly the out-of-range ones"


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_embedding_int32_and_int64_agree_and_misaligned_tables(cuda_ops, dtype):
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    vocab, positions, hidden = 300, 64, 768
    # One element into their storage: not 16-byte aligned although hidden is a multiple of the vector width.
    wte = torch.randn(vocab * hidden + 1, generator=gen, device="cuda").to(dtype)[1:].view(vocab, hidden)
    wpe = torch.randn(positions * hidden + 1, generator=gen, device="cuda").to(dtype)[1:].view(positions, hidden)
    ids = torch.randint(0, vocab, (5, 17), generator=gen, device="cuda")
    pos = torch.randint(0, positions, (5, 17), generator=gen, device="cuda")
    out = cuda_ops.embedding(ids, pos, wte, wpe)
    _assert_same(out, reference.embedding(ids, pos, wte, wpe), "embedding misaligned")
    assert torch.equal(out, cuda_ops.embedding(ids.int(), pos.int(), wte, wpe))
    assert torch.equal(out, cuda_ops.embedding(ids.int(), pos, wte, wpe))


# ------------------------------------------------------------------------------------------------
# kv_append


def _kv_cases():
    cases = []
    for name, dtype in DTYPES.items():
        for heads_q, heads_kv, head_dim in KV_SHAPES + [_random_kv_shape() for _ in range(2)]:
            width = (heads_q + 2 * heads_kv) * head_dim
            batch = _rng.choice([1, 2, _rng.randint(1, 9)])
            seq = _rng.choice([1, 1, 7, _rng.randint(1, 300)])
            while batch * seq * width > MAX_ELEMS and seq > 1:
                seq = max(1, seq // 2)
            cache_len = _rng.choice([1, seq, seq + _rng.randint(0, 200), _rng.randint(1, 1024)])
            cache_layout = _rng.choice(["slice", "contig", "misaligned"])
            qkv_layout = _rng.choice(["contig", "wide_rows", "transposed"])
            with_bias = _rng.random() < 0.7
            seed = _rng.randrange(1 << 31)
            case_id = (
                f"{name}-h{heads_q}x{heads_kv}-d{head_dim}-b{batch}-s{seq}-L{cache_len}-{cache_layout}-{qkv_layout}"
                f"-{'bias' if with_bias else 'nobias'}-s{seed}"
            )
            cases.append(pytest.param(dtype, heads_q, heads_kv, head_dim, batch, seq, cache_len, cache_layout,
                                      qkv_layout, with_bias, seed, id=case_id))
    return cases


def _random_kv_shape():
    heads_kv = _rng.randint(1, 16)
    return heads_kv * _rng.choice([1, 2, 4]), heads_kv, _rng.choice([_rng.randint(1, 300), 64, 128, 80])


def _write_positions(batch: int, seq: int, cache_len: int, rng: random.Random) -> list[int]:
    """Inside, crossing either end, entirely outside, and the int32 extremes."""
    choices = [0, cache_len - seq, cache_len - 1, -seq + 1, -seq - 2, cache_len, rng.randint(-seq, cache_len)]
    out = [max(0, cache_len - seq) if rng.random() < 0.5 else rng.choice(choices) for _ in range(batch)]
    if rng.random() < 0.15:
        out[rng.randrange(batch)] = rng.choice([-(1 << 31), (1 << 31) - 1 - seq // 2, (1 << 31) - 1])
    return out


def _caches(batch, heads_kv, cache_len, head_dim, dtype, layout):
    """(buffer that owns the memory, k_cache view, v_cache view), every element the sentinel."""
    if layout == "slice":  # the engine's layout: one [layers, 2, B, H, L, D] buffer
        buf = torch.full((3, 2, batch, heads_kv, cache_len, head_dim), SENTINEL, dtype=dtype, device="cuda")
        return buf, buf[1, 0], buf[1, 1]
    if layout == "misaligned":  # row stride head_dim + 1 and a one-element offset: the scalar path
        buf = torch.full((2, batch, heads_kv, cache_len, head_dim + 1), SENTINEL, dtype=dtype, device="cuda")
        return buf, buf[0, ..., 1:], buf[1, ..., :head_dim]
    buf = torch.full((2, batch, heads_kv, cache_len, head_dim), SENTINEL, dtype=dtype, device="cuda")
    return buf, buf[0], buf[1]


def _qkv(batch, seq, width, dtype, layout, gen):
    if layout == "wide_rows":  # a view into a wider GEMM output
        return torch.randn(batch, seq, width + 3, generator=gen, device="cuda").to(dtype)[..., :width]
    if layout == "transposed":  # [seq, batch, width] storage
        return torch.randn(seq, batch, width, generator=gen, device="cuda").to(dtype).transpose(0, 1)
    return torch.randn(batch, seq, width, generator=gen, device="cuda").to(dtype)


@pytest.mark.parametrize(
    "dtype, heads_q, heads_kv, head_dim, batch, seq, cache_len, cache_layout, qkv_layout, with_bias, seed",
    quick_sample(_kv_cases(), 8),
)
def test_kv_append(cuda_ops, dtype, heads_q, heads_kv, head_dim, batch, seq, cache_len, cache_layout, qkv_layout,
                   with_bias, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    width = (heads_q + 2 * heads_kv) * head_dim
    qkv = _qkv(batch, seq, width, dtype, qkv_layout, gen)
    bias = torch.randn(width, generator=gen, device="cuda").to(dtype) if with_bias else None
    write_pos = torch.tensor(_write_positions(batch, seq, cache_len, random.Random(seed)), dtype=torch.int32,
                             device="cuda")
    buf, k_cache, v_cache = _caches(batch, heads_kv, cache_len, head_dim, dtype, cache_layout)
    ref_buf, ref_k, ref_v = _caches(batch, heads_kv, cache_len, head_dim, dtype, cache_layout)
    q_ref = reference.kv_append(qkv, bias, ref_k, ref_v, write_pos, heads_q, heads_kv)

    poison_next_alloc(batch * heads_q * seq * head_dim, dtype)
    q = cuda_ops.kv_append(qkv, bias, k_cache, v_cache, write_pos, heads_q, heads_kv)
    assert q.shape == (batch, heads_q, seq, head_dim) and q.dtype == dtype and q.is_contiguous()
    _assert_same(q, q_ref, "kv_append q")
    _assert_same(buf, ref_buf, "kv_append caches (the whole buffer: written slots and untouched rest)")


def test_kv_append_cuda_graph_replay_follows_write_pos(cuda_ops):
    """Captured once, replayed with new qkv values and new write positions (read on the device, including
    slots past the end): each replay must equal the reference applied to the same state."""
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    batch, seq, heads, head_dim, cache_len = 3, 1, 12, 64, 40
    width = 3 * heads * head_dim
    qkv = torch.randn(batch, seq, width, generator=gen, device="cuda").half()
    bias = torch.randn(width, generator=gen, device="cuda").half()
    buf, k_cache, v_cache = _caches(batch, heads, cache_len, head_dim, torch.float16, "slice")
    ref_buf, ref_k, ref_v = _caches(batch, heads, cache_len, head_dim, torch.float16, "slice")
    write_pos = torch.tensor([0, 5, 39], dtype=torch.int32, device="cuda")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, then restore the caches
        cuda_ops.kv_append(qkv, bias, k_cache, v_cache, write_pos, heads, heads)
    torch.cuda.current_stream().wait_stream(side)
    buf.fill_(SENTINEL)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_q = cuda_ops.kv_append(qkv, bias, k_cache, v_cache, write_pos, heads, heads)

    for positions in ([0, 5, 39], [1, 6, 40], [2, -1, 7], [39, 39, 1 << 30]):
        write_pos.copy_(torch.tensor(positions, dtype=torch.int32))
        qkv.copy_(torch.randn(batch, seq, width, generator=gen, device="cuda").half())
        graph.replay()
        q_ref = reference.kv_append(qkv, bias, ref_k, ref_v, write_pos, heads, heads)
        torch.cuda.synchronize()
        _assert_same(static_q, q_ref, f"graph replay q at {positions}")
        _assert_same(buf, ref_buf, f"graph replay caches at {positions}")


# ------------------------------------------------------------------------------------------------
# Argument checks and op registration


def test_argument_errors_name_the_problem(cuda_ops):
    f16 = dict(device="cuda", dtype=torch.float16)
    qkv = torch.randn(2, 3, 3 * 4 * 8, **f16)
    cache = torch.zeros(2, 4, 6, 8, **f16)
    pos = torch.zeros(2, dtype=torch.int32, device="cuda")
    cases = [
        (lambda: cuda_ops.kv_append(qkv, None, cache, cache.clone(), pos, 5, 4), "heads_q \\+ 2 \\* heads_kv"),
        (lambda: cuda_ops.kv_append(qkv, None, cache, cache.clone(), pos.long(), 4, 4), "write_pos must be an int32"),
        (lambda: cuda_ops.kv_append(qkv, None, cache, cache.float(), pos, 4, 4), "dtype|differs"),
        (lambda: cuda_ops.kv_append(qkv, None, cache, cache.clone(), pos[:1], 4, 4), "write_pos must be"),
        (lambda: cuda_ops.kv_append(qkv, None, cache[:, :2], cache[:, :2].clone(), pos, 4, 4), "k_cache must be"),
        (lambda: cuda_ops.kv_append(qkv, None, cache, cache, pos, 4, 4), "same memory"),
        (lambda: cuda_ops.kv_append(qkv, torch.zeros(5, **f16), cache, cache.clone(), pos, 4, 4), "bias must have"),
        (lambda: cuda_ops.kv_append(qkv.cpu(), None, cache, cache.clone(), pos, 4, 4), "CUDA tensor"),
    ]
    wte = torch.randn(10, 8, **f16)
    ids = torch.zeros(2, 3, dtype=torch.long, device="cuda")
    cases += [
        (lambda: cuda_ops.embedding(ids.float(), ids, wte, None), "int64 or int32"),
        (lambda: cuda_ops.embedding(ids, ids[:1], wte, None), "expand"),
        (lambda: cuda_ops.embedding(ids, ids, wte, torch.randn(4, 9, **f16)), "wpe must be"),
        (lambda: cuda_ops.embedding(ids, ids, wte, torch.randn(4, 8, device="cuda")), "dtype"),
        (lambda: cuda_ops.embedding(ids.cpu(), ids, wte, None), "CUDA tensor"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_non_contiguous_cache_last_dim_is_refused(cuda_ops):
    qkv = torch.randn(1, 1, 3 * 2 * 4, device="cuda")
    cache = torch.zeros(1, 2, 4, 5, device="cuda").transpose(2, 3)  # [1, 2, 5, 4], last-dim stride 5
    pos = torch.zeros(1, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="contiguous last dim"):
        cuda_ops.kv_append(qkv, None, cache, torch.zeros(1, 2, 5, 4, device="cuda"), pos, 2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(cuda_ops, dtype):
    dev = dict(device="cuda", dtype=dtype)
    ids = torch.randint(0, 11, (2, 3), device="cuda")
    torch.library.opcheck(torch.ops.eet.embedding.default, (ids, ids % 5, torch.randn(11, 16, **dev),
                                                            torch.randn(5, 16, **dev)))
    torch.library.opcheck(torch.ops.eet.embedding.default, (ids.int(), ids, torch.randn(11, 7, **dev), None))
    args = (torch.randn(2, 3, 8 * 8, **dev), torch.randn(64, **dev), torch.zeros(2, 2, 5, 8, **dev),
            torch.zeros(2, 2, 5, 8, **dev), torch.tensor([0, 3], dtype=torch.int32, device="cuda"), 4, 2)
    torch.library.opcheck(torch.ops.eet.kv_append.default, args)


_RAW_ERROR_SCRIPT = """
import sys, torch, eet_hf.ops as o
assert o.ensure_loaded()
f16 = dict(device="cuda", dtype=torch.float16)
cache = torch.zeros(2, 4, 6, 8, **f16)
calls = {
    "layer_norm": lambda: torch.ops.eet.layer_norm(torch.randn(2, 8, **f16), torch.randn(9, **f16), None, 1e-5),
    "embedding": lambda: torch.ops.eet.embedding(torch.zeros(2, 3, dtype=torch.long, device="cuda"),
                                                 torch.zeros(1, 3, dtype=torch.long, device="cuda"),
                                                 torch.randn(10, 8, **f16), None),
    "rms_norm": lambda: torch.ops.eet.rms_norm(torch.randn(4, 64, device="cuda"), torch.randn(63, device="cuda"), 1e-5),
    "kv_append": lambda: torch.ops.eet.kv_append(torch.randn(2, 3, 96, **f16), None, cache, cache.clone(),
                                                 torch.zeros(2, dtype=torch.int32, device="cuda"), 5, 4),
    "rotary": lambda: torch.ops.eet.rotary(torch.randn(1, 2, 3, 8, **f16), torch.randn(1, 2, 3, 8, **f16),
                                           torch.randn(1, 3, 5, **f16), torch.randn(1, 3, 5, **f16)),
}
try:
    calls[sys.argv[1]]()
except RuntimeError as error:
    print("raised:", str(error).splitlines()[0])
"""


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "embedding", "kv_append", "rotary"])
def test_raw_op_argument_error_raises_without_crashing(cuda_ops, op):
    """torch.ops.eet.* called directly with bad arguments: a RuntimeError, never a dead process (a subprocess, so
    that a crash fails this test instead of the whole run)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _RAW_ERROR_SCRIPT, op], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "raised:" in done.stdout, (done.returncode, done.stdout[-500:], done.stderr[-1500:])
