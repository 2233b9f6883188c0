"""Deterministic inputs for the suites, cut from the embedded held-out text (never trained on)."""

from __future__ import annotations

from eet_hf.models import heldout_text_path


def paragraphs(min_chars: int = 40) -> list[str]:
    """Held-out paragraphs (blank-line separated), in file order."""
    text = heldout_text_path().read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) >= min_chars]


def varied_texts(n: int) -> list[str]:
    """n texts of growing length (1, 4, 7, ... paragraphs), so a padded batch has short and full-length rows."""
    paras = paragraphs()
    texts, start = [], 0
    for i in range(n):
        k = 1 + 3 * i
        texts.append("\n\n".join(paras[start : start + k]))
        start += k
    return texts


def prompts(n: int) -> list[str]:
    """n generation prompts: the first 3..8 words of successive paragraphs (varied lengths -> left padding)."""
    out = []
    for i, para in enumerate(paragraphs()[:n]):
        out.append(" ".join(para.split()[: 3 + i % 6]))
    return out


def masked_texts(n: int, mask_token: str) -> list[str]:
    """n sentences with their 4th word replaced by `mask_token` (fill-mask inputs)."""
    out = []
    for para in paragraphs():
        words = para.split()[:14]
        if len(words) < 8:
            continue
        words[3] = mask_token
        out.append(" ".join(words))
        if len(out) == n:
            break
    return out
