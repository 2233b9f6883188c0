"""sentence-transformers' encode() with tokenization running ahead of the forward, on a few threads.

`SentenceTransformer._inference` (sentence-transformers 6.3) is strictly serial per batch: tokenize
(`self.preprocess`), copy to the device, forward, normalise, copy the embeddings back to the host (a sync), then the
next batch. On an H100 host, 10,000 mixed-length sentences at batch 64 took 3.58 s with HF sdpa and 2.52 s with eet,
of which tokenization alone was 2.0 s: the host and the GPU never overlap, so eet could not pass ~1.8x HF whatever its
kernels do. Most of `preprocess` is the Rust tokenizer's `encode_batch`, which releases the GIL, so a thread pool can
tokenize the next batches while the main thread runs the forward of this one.

accelerate() of a SentenceTransformer whose class keeps sentence-transformers' own `_inference` binds a
`PipelinedInference` as the instance's `_inference` (restore() removes it). It runs the plain case (a list of strings,
sentence embeddings, not on HPU) with sentence-transformers' batches in its order (its length sort, its slicing), each
batch's `preprocess` on a worker thread, and the rest of the loop on the caller's thread exactly as
sentence-transformers runs it (each batch's embeddings copied to the host before the next forward, as it does), so the
embeddings are the same to the bit. Anything else (token embeddings, output_value=None, other modalities, HPU, no
inputs) runs sentence-transformers' own `_inference`. EET_HF_ST_TOKENIZE_WORKERS (read by accelerate(), default 2)
sets the threads; 0 leaves the instance alone.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ._log import logger

ENV = "EET_HF_ST_TOKENIZE_WORKERS"
DEFAULT_WORKERS = 2
THREAD_PREFIX = "eet_hf-tokenize"
# _inference's keyword-only arguments in sentence-transformers 6.3; a version without them keeps its own loop.
KEYWORDS = ("prompt", "batch_size", "show_progress_bar", "output_value", "save_to_cpu", "normalize_embeddings",
            "truncate_dim", "device")
HELPERS = ("preprocess", "_input_length", "_can_flatten_inputs", "_interleave_sorted_indices",
           "_resolve_inference_device")


def workers() -> int:
    """The tokenization threads EET_HF_ST_TOKENIZE_WORKERS asks for (default 2; 0: sentence-transformers' loop)."""
    value = os.environ.get(ENV, "").strip() or str(DEFAULT_WORKERS)
    if not value.isdigit():
        raise ValueError(f"eet_hf: {ENV}={value!r}: expected a number of tokenization threads, 0 or more "
                         "(0 keeps sentence-transformers' own encode loop)")
    return int(value)


def _pipelines(model: torch.nn.Module) -> bool:
    """Whether `model` is a SentenceTransformer running sentence-transformers' own `_inference` of 6.3's form."""
    cls = getattr(sys.modules.get("sentence_transformers"), "SentenceTransformer", None)
    original = getattr(cls, "_inference", None)
    if original is None or not isinstance(model, cls) or type(model)._inference is not original:
        return False
    params = inspect.signature(original).parameters
    keyword_only = all(name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in KEYWORDS)
    return keyword_only and all(hasattr(model, name) for name in HELPERS)


def install(model: torch.nn.Module) -> None:
    """Bind the pipelined `_inference` on a SentenceTransformer instance; nothing for other modules, for a
    sentence-transformers without 6.3's `_inference`, with EET_HF_ST_TOKENIZE_WORKERS=0, or when already bound."""
    count = workers()
    if count == 0 or isinstance(model.__dict__.get("_inference"), PipelinedInference) or not _pipelines(model):
        return
    model.__dict__["_inference"] = PipelinedInference(model, count)
    logger.info("eet_hf: %s.encode() tokenizes on %d thread(s) ahead of the forward (%s=0 turns this off)",
                type(model).__name__, count, ENV)


def remove(model: torch.nn.Module) -> None:
    """Undo install(): the instance's `_inference` is its class's again."""
    if isinstance(model.__dict__.get("_inference"), PipelinedInference):
        del model.__dict__["_inference"]


class PipelinedInference:
    """A SentenceTransformer's `_inference`, same arguments and result, with tokenization on `workers` threads.

    A plain object rather than a bound method, so that copying or pickling the model carries it along to the copy.
    """

    def __init__(self, model: torch.nn.Module, workers: int) -> None:
        self.model, self.workers = model, workers

    def __call__(self, inputs: list, **options: Any) -> Any:
        model = self.model
        if not _plain_case(model, inputs, options):
            return type(model)._inference(model, inputs, **options)
        with torch.inference_mode():
            return _encode(model, inputs, self.workers, **options)


def _plain_case(model: torch.nn.Module, inputs: list, options: dict[str, Any]) -> bool:
    device = options.get("device")
    on_hpu = torch.device(device if device is not None else model.device).type == "hpu"
    return (options.get("output_value") == "sentence_embedding" and not on_hpu and bool(inputs)
            and all(isinstance(text, str) for text in inputs))


def _encode(model: torch.nn.Module, inputs: list[str], workers: int, *, prompt: str | None, batch_size: int,
            show_progress_bar: bool, output_value: str, save_to_cpu: bool, normalize_embeddings: bool,
            truncate_dim: int | None, device: Any = None, **kwargs: Any) -> torch.Tensor:
    """sentence-transformers 6.3's `_inference` loop for sentence embeddings: [len(inputs), dim] in input order."""
    from sentence_transformers.util import batch_to_device, truncate_embeddings
    from tqdm.autonotebook import tqdm

    device = model._resolve_inference_device(device)
    model.eval()
    order, batches = _batches(model, inputs, batch_size)

    def tokenize(batch: list[str]) -> dict[str, Any]:
        with torch.inference_mode():  # per thread: the features are inference tensors, as in the caller's loop
            return model.preprocess(batch, prompt=prompt, **kwargs)

    kept: list[torch.Tensor] = []
    with _thread_pool(workers) as pool:
        for features in tqdm(_ahead(pool, tokenize, batches, workers + 1), total=len(batches), desc="Batches",
                             disable=not show_progress_bar):
            embeddings = model(batch_to_device(features, device), **kwargs)[output_value]
            if truncate_dim is not None:
                embeddings = truncate_embeddings(embeddings, truncate_dim)
            if normalize_embeddings:
                embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
            # As sentence-transformers does (a sync per batch on CUDA): the workers tokenize on meanwhile.
            kept.append(embeddings.cpu() if save_to_cpu else embeddings)
    rows = torch.cat(kept)
    return rows[torch.as_tensor(np.argsort(order), device=rows.device)]


def _batches(model: torch.nn.Module, inputs: list[str], batch_size: int) -> tuple[np.ndarray, list[list[str]]]:
    """sentence-transformers' order (its length sort, interleaved where it flattens inputs) and its batches."""
    order = np.argsort([-model._input_length(text) for text in inputs])
    if model._can_flatten_inputs():
        order = model._interleave_sorted_indices(order)
    ordered = [inputs[i] for i in order]
    return order, [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]


@contextlib.contextmanager
def _thread_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool whose threads are gone when the block ends, however it ends (batches not started are cancelled)."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=THREAD_PREFIX)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ahead(pool: ThreadPoolExecutor, work: Callable[[Any], Any], items: Iterable[Any], depth: int) -> Iterator[Any]:
    """work(item) for each item, in order, computed on `pool` up to `depth` items ahead of the consumer; an
    exception in work is raised here, at its item.

    The first item runs alone: a fast tokenizer's first call sets padding and truncation on the Rust tokenizer the
    threads share, which fails while another thread is encoding with it ("Already borrowed", transformers#47085; with
    tokenizers 0.23 it waits instead). Later calls find the same settings in place and change nothing (the prompt's
    length is cached by then too)."""
    items = iter(items)
    pending = deque(pool.submit(work, item) for item in itertools.islice(items, 1))
    while pending:
        result = pending.popleft().result()
        pending.extend(pool.submit(work, item) for item in itertools.islice(items, depth - len(pending)))
        yield result
