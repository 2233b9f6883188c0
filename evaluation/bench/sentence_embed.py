"""Suite `sentence-embed` (issue #28): sentence-transformers `SentenceTransformer.encode()` throughput per engine,
and how far each engine's embeddings are from plain sentence-transformers'.

Timed: `encode(sentences, batch_size=64)` as a user calls it (numpy output, so each batch's embeddings are copied to
the host; tokenization on the host included), wall clock between CUDA synchronizes, over 10,000 held-out sentences
whose token lengths are drawn uniformly from 8..256 (sentences.py; sentence-transformers sorts them by length, so its
157 batches are padded to many different lengths). Two untimed encodes come first: `warmup_s` is the first
(compilation, kernel builds); the second shows every shape a second time, since eet's whole-model graphs and
reduce-overhead's CUDA graphs both record a shape on its second call. `encode_s` is the median of ctx.repeats timed
encodes, `sentences_per_s` the sentences over it. `tokenize_s` (engine "reference") is encode()'s tokenization alone,
the same batches through the model's own tokenization on the host: the floor under every engine's encode_s.

Models (shapes.SENTENCE_SIZES): Transformer + mean Pooling around a BERT-base shaped BertModel and an XLM-R-base
shaped XLMRobertaModel, seeded random weights, fp16 on CUDA, saved to a temporary directory with the embedded BERT's
tokenizer (eet_hf.models: byte-level BPE, 4,096 tokens, pad id 0; both models use it, there is no hub here) and
loaded back by sentence-transformers once per engine. XLM-R's vocabulary is cut from 250,002 rows to 30,522: the
tokenizer reaches only the first 4,096, a row lookup costs the same in a smaller table, and saving and loading
250k x 768 embeddings would add seconds per engine. --quick: a 2-layer BERT on CPU in fp32, 64 sentences, batch 16.

Agreement with hf-sdpa (same weights, same sentences): `min_cosine`, the lowest cosine over the sentences of an
engine's embedding with hf-sdpa's; `min_centered_cosine`, the same after subtracting hf-sdpa's mean embedding from
both. Both, because with random weights the mean-pooled embeddings of *different* sentences already have cosine
about 0.95 (a component every sentence shares dominates): min_cosine near 1 does not rule out a wrong engine, the
centered one does (different sentences come out near 0 there).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from eet_hf.models import default_model_path

from ..results_io import make_row as row
from . import engines as E
from . import shapes as S
from .context import RunContext
from .output import error_row
from .sentences import mixed_length_sentences, token_lengths
from .timing import free_memory, sync

NAME = "sentence-embed"
HEADLINE = ["sentences_per_s", "encode_s", "tokenize_s", "min_centered_cosine", "min_cosine", "warmup_s"]
LOG_METRICS = ("warmup_s",)
LOW, HIGH = 8, 256  # token lengths, [CLS] and [SEP] included


def plan(quick: bool) -> tuple[list[S.ModelShape], int, int]:
    """(models, sentences, batch size)."""
    if quick:
        return S.TINY_SENTENCE, 64, 16
    return S.SENTENCE_SIZES, 10_000, 64


def model_names(quick: bool) -> list[str]:
    return [m.name for m in plan(quick)[0]]


def run(ctx: RunContext) -> list[dict]:
    shapes, count, batch = plan(ctx.quick)
    engines = [e for e in E.SENTENCE if ctx.wants_engine(e)]
    cases = [(f"{m.name}/n{count}/bs{batch}", m) for m in shapes if ctx.wants_model(m.name)]
    try:
        _modules()
    except ImportError as exc:  # an optional dependency: say so in every row rather than crash the run
        missing = f"sentence-transformers is not installed ({exc})"
        return [error_row(case, e, missing) for case, _ in cases for e in engines]
    tokenizer = AutoTokenizer.from_pretrained(default_model_path("bert"))
    sentences = mixed_length_sentences(tokenizer, count, LOW, HIGH)
    lengths = token_lengths(tokenizer, sentences)
    ctx.notes.append(f"SentenceTransformer (mean pooling) {ctx.dtype} on {ctx.device}: {count} sentences of "
                     f"{lengths.min()}..{lengths.max()} tokens (median {int(statistics.median(lengths))}), "
                     f"batch {batch}; encode_s = median of {ctx.repeats} encode() calls after two untimed ones.")
    rows: list[dict] = []
    with _no_progress_bars():
        for case, shape in cases:
            rows += model_cases(ctx, shape, tokenizer, engines, case, sentences, batch)
    return rows


def model_cases(ctx: RunContext, shape: S.ModelShape, tokenizer, engines: list[str], case: str,
                sentences: list[str], batch: int) -> list[dict]:
    """Every engine on one saved model, hf-sdpa first: its embeddings are the others' reference."""
    if ctx.budget.spent():
        return [_skipped(ctx, case, e) for e in engines]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="eet-sentence-embed-") as folder:
        try:
            save(shape, tokenizer, folder, ctx.device)
        except Exception as exc:  # noqa: BLE001 - no model, no cases: every engine's row says why
            return [error_row(case, e, exc) for e in engines]
        reference = None
        if "hf-sdpa" not in engines and engines:
            ctx.notes.append(f"{case}: hf-sdpa not selected; its embeddings computed untimed as the reference")
            reference = _encode(load(folder, ctx.device, ctx.dtype), sentences, batch)
        rows += tokenize_rows(ctx, folder, case, sentences, batch)
        for engine in engines:
            engine_rows, embeddings = engine_case(ctx, folder, engine, case, sentences, batch)
            reference = embeddings if engine == "hf-sdpa" else reference
            rows += engine_rows + agreement_rows(case, engine, embeddings, reference)
    return rows


def engine_case(ctx: RunContext, folder: str, engine: str, case: str, sentences: list[str],
                batch: int) -> tuple[list[dict], torch.Tensor | None]:
    """(rows, the last timed encode's embeddings [sentences, hidden] or None on an error)."""
    if ctx.budget.spent():
        return [_skipped(ctx, case, engine)], None
    ctx.log(f"sentence-embed {case} {engine}")
    model = None
    try:
        model = load(folder, ctx.device, ctx.dtype)
        ctx.notes.append(f"{engine} on {case}: {E.prepare_sentence_model(model, engine, ctx.device)}")
        warmup, _ = _timed(model, sentences, batch, ctx.device)
        _encode(model, sentences, batch)
        timed = [_timed(model, sentences, batch, ctx.device) for _ in range(max(1, ctx.repeats))]
        if engine == "eet":
            ctx.notes.append(f"eet on {case}: {_graph_counts(model)}")
    except Exception as exc:  # noqa: BLE001 - e.g. a torch.compile failure: record it, go on
        ctx.log(f"  error: {type(exc).__name__}: {str(exc)[:200]}")
        return [error_row(case, engine, exc)], None
    finally:
        model = None  # drop the last reference before freeing the cache
        E.reset_compiled(engine)
        free_memory(ctx.device)
    seconds = statistics.median(s for s, _ in timed)
    ctx.log(f"  {len(sentences) / seconds:.0f} sentences/s ({seconds:.2f} s; first encode {warmup:.1f} s)")
    return [
        row(case, engine, "sentences_per_s", len(sentences) / seconds, "sentences/s"),
        row(case, engine, "encode_s", seconds, "s"),
        row(case, engine, "warmup_s", warmup, "s"),
    ], timed[-1][1]


def tokenize_rows(ctx: RunContext, folder: str, case: str, sentences: list[str], batch: int) -> list[dict]:
    """`tokenize_s` (engine "reference"): encode()'s tokenization alone, the same batches (sorted longest first, as
    encode() sorts them) through the model's own tokenization, median of ctx.repeats. No engine's encode() can take
    less: it is the host-side floor of every engine's encode_s."""
    if ctx.budget.spent():
        return []
    model = load(folder, "cpu", torch.float32)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers 6 / earlier
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    batches = [[sentences[j] for j in order[i:i + batch]] for i in range(0, len(sentences), batch)]
    times = []
    for _ in range(max(1, ctx.repeats)):
        start = time.perf_counter()
        for texts in batches:
            tokenize(texts)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    ctx.log(f"  tokenization alone: {seconds:.2f} s")
    return [row(case, "reference", "tokenize_s", seconds, "s")]


def agreement_rows(case: str, engine: str, got: torch.Tensor | None, reference: torch.Tensor | None) -> list[dict]:
    """min_cosine and min_centered_cosine of `got` against hf-sdpa's embeddings (none for hf-sdpa itself)."""
    if engine == "hf-sdpa" or got is None or reference is None:
        return []
    got, reference = got.double(), reference.double()
    centre = reference.mean(dim=0)
    cosine = torch.nn.functional.cosine_similarity
    return [
        row(case, engine, "min_cosine", cosine(got, reference, dim=1).min().item(), "cosine"),
        row(case, engine, "min_centered_cosine", cosine(got - centre, reference - centre, dim=1).min().item(),
            "cosine"),
    ]


def save(shape: S.ModelShape, tokenizer, folder: str, device: str) -> None:
    """The shape's model with seeded random weights (fp32: the engines cast on load) and the tokenizer, as HF saves
    them, for sentence-transformers' Transformer to load."""
    shape.build(device, torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load(folder: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A fresh SentenceTransformer (Transformer + mean Pooling) of the saved model, on `device` in `dtype`."""
    sentence_transformer, transformer_class, pooling_class = _modules()
    transformer = transformer_class(folder)
    pooling = pooling_class(transformer.get_embedding_dimension(), "mean")
    return sentence_transformer(modules=[transformer, pooling], device=device).to(dtype).eval()


def _modules() -> tuple[type, type, type]:
    """SentenceTransformer, Transformer, Pooling (6.3 moved the modules; older releases keep `models`)."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    return SentenceTransformer, Transformer, Pooling


def _encode(model: torch.nn.Module, sentences: list[str], batch: int) -> torch.Tensor:
    """encode() as a user calls it (numpy out), as a CPU tensor [sentences, hidden]."""
    return torch.from_numpy(model.encode(sentences, batch_size=batch))


def _timed(model: torch.nn.Module, sentences: list[str], batch: int, device: str) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    embeddings = _encode(model, sentences, batch)
    sync(device)
    return time.perf_counter() - start, embeddings


def _graph_counts(model: torch.nn.Module) -> str:
    """eet's whole-model graph counters after every encode of this engine (on CUDA), or why there are none."""
    try:
        from eet_hf.encoder.model_graphs import ATTR
    except ImportError:
        return "this eet_hf has no whole-model graphs"
    cache = model[0].auto_model.__dict__.get(ATTR)
    if cache is None:
        return "no whole-model graphs installed (CPU, or refused: see the eet_hf log)"
    return f"whole-model graphs: {cache.captures} captures, {cache.replays} replays, {cache.fallbacks} fallbacks"


def _skipped(ctx: RunContext, case: str, engine: str) -> dict:
    return error_row(case, engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent")


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' save/load progress bars would fill the GPU host's returned output tail."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
