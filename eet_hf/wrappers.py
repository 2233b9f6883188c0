"""accelerate / restore / explain on a module that holds transformers models without being one: a
sentence-transformers SentenceTransformer, CrossEncoder or SparseEncoder (whose Transformer module keeps the HF model
as `auto_model`), or a user's own nn.Module around a model.

Such a wrapper is not rewired itself: its forward, tokenization, pooling and normalisation stay its own. Each
outermost PreTrainedModel inside it is accelerated in place, with the same options, exactly as if it had been passed
directly, so `SentenceTransformer.encode(...)` runs the packed encoder (and, on CUDA, whole-model graphs: the
Transformer module calls the HF model with input_ids, attention_mask and token_type_ids as keywords, the plain form).
restore() restores each of them; explain() reports on the one model inside, or on several with their paths prefixed.
The one part of a wrapper that eet replaces is a SentenceTransformer's encode() loop, which tokenizes the next batches
on threads while the forward runs (eet_hf/sentence_pipeline.py: tokenization took most of eet's encode time there);
restore() puts sentence-transformers' loop back.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from .report import Report


def held_models(module: nn.Module) -> list[tuple[str, PreTrainedModel]]:
    """(path, model) of each outermost transformers model inside `module`; [] when `module` is itself one, or holds
    none."""
    if isinstance(module, PreTrainedModel):
        return []
    found: list[tuple[str, PreTrainedModel]] = []
    for path, sub in module.named_modules():
        if isinstance(sub, PreTrainedModel) and not any(path.startswith(f"{outer}.") for outer, _ in found):
            found.append((path, sub))
    return found


def merged_report(reports: list[tuple[str, Report]]) -> Report:
    """One report for a wrapper: the one model's own, or every model's entries as '<path>: <entry>'."""
    if len(reports) == 1:
        return reports[0][1]
    merged = Report(model_type="+".join(dict.fromkeys(r.model_type for _, r in reports)),
                    kernels="+".join(dict.fromkeys(r.kernels for _, r in reports)), device=reports[0][1].device)
    for path, report in reports:
        merged.accelerated += [f"{path}: {entry}" for entry in report.accelerated]
        merged.fallbacks.update({f"{path}: {entry}": why for entry, why in report.fallbacks.items()})
        merged.cuda_only.update({f"{path}: {entry}": why for entry, why in report.cuda_only.items()})
    return merged
