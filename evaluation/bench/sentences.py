"""Mixed-length sentences for the sentence-embed suite: word windows of the embedded held-out text, cut so their
token lengths (as the tokenizer counts them, [CLS] and [SEP] included) spread uniformly over a range."""

from __future__ import annotations

import numpy as np

from eet_hf.models import heldout_text_path

SEED = 0


def token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    """Tokens per text as the model sees it (special tokens included, no truncation): int array [len(texts)]."""
    return np.array([len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]], dtype=np.int64)


def mixed_length_sentences(tokenizer, count: int, low: int, high: int, seed: int = SEED) -> list[str]:
    """`count` word windows of the held-out text, targets drawn uniformly from [low, high] with `seed`; each window
    has the words that fit its target, give or take one (token lengths all within [low, high]).

    The tokenizer is byte-level BPE, so a window's length is not a sum of per-word counts; the whole text is
    tokenized once and a window's length estimated from where its words' tokens start, then every window is
    tokenized and the few the estimate got wrong are shortened (or, below `low`, lengthened) a word at a time."""
    words = heldout_text_path().read_text(encoding="utf-8").split()
    rng = np.random.default_rng(seed)
    targets = rng.integers(low, high + 1, count)
    # Every word is at least one token, so a window of `high` words from any start is long enough.
    starts = rng.integers(0, len(words) - high, count)
    first_token = _first_tokens(tokenizer, words)
    n_words = np.searchsorted(first_token, first_token[starts] + targets - 2, side="right") - 1 - starts
    n_words = np.maximum(n_words, 1)
    lengths = token_lengths(tokenizer, _windows(words, starts, n_words))
    for wrong, step in ((lambda: (lengths > targets) & (n_words > 1), -1), (lambda: lengths < low, +1)):
        while (picked := np.flatnonzero(wrong())).size:
            n_words[picked] += step
            lengths[picked] = token_lengths(tokenizer, _windows(words, starts[picked], n_words[picked]))
    return _windows(words, starts, n_words)


def _first_tokens(tokenizer, words: list[str]) -> np.ndarray:
    """Index of each word's first token in the tokenized " ".join(words), and the token count last: [len(words) + 1]."""
    text = " ".join(words)
    word_starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    token_ends = np.array([end for _, end in offsets])
    # A word's first token is the first one ending after the word starts (byte-level BPE glues the space to it).
    return np.append(np.searchsorted(token_ends, word_starts, side="right"), len(offsets))


def _windows(words: list[str], starts: np.ndarray, n_words: np.ndarray) -> list[str]:
    return [" ".join(words[s : s + n]) for s, n in zip(starts.tolist(), n_words.tolist())]
