"""Word n-grams as 64-bit hashes, for near-duplicate detection and the contamination check.

Words are `elimination.words`: Unicode words of any script (NFKC, case-folded), each ideograph a
word of its own, so a Chinese sentence gives character n-grams and spacing or case cannot hide a
copy. Hashes are stable across processes and machines (blake2b of the word, then a 64-bit mixer),
never Python's per-process `hash`.
"""
from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np

from evol.elimination import words

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array: every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        z = values + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# ASCII text (most instructions) gives the same words by plain str operations, 7x faster than the
# Unicode pattern: NFKC and the apostrophe table leave ASCII as it is, casefold is lower, and a word
# character of ASCII is a letter or a digit (tests/test_curation.py checks it against `words`).
_ASCII_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_ASCII_SPACES = str.maketrans({chr(c): chr(c).lower() if chr(c).isalnum() else " " for c in range(128)})


def text_words(text: str) -> list[str]:
    """The words of a text; a text without any (symbols only) is one word: itself, stripped."""
    if not text.isascii():
        found = words(text)
    elif "'" in text:
        found = _ASCII_WORD.findall(text.lower())
    else:
        found = text.translate(_ASCII_SPACES).split()
    return found or [text.strip()]


class _WordHashes(dict):
    """word -> its 64-bit hash, computed on first use and kept for the process (a Ray worker sees
    many batches of the same words); cleared when it holds WORD_CACHE words."""

    def __missing__(self, word: str) -> int:
        value = self[word] = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return value


WORD_CACHE = 1 << 18  # some 50 MB
_HASHES = _WordHashes()


def word_hashes(word_lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """All words of many texts as one uint64 array, and where each text starts in it (plus the end)."""
    if len(_HASHES) > WORD_CACHE:
        _HASHES.clear()
    starts = np.zeros(len(word_lists) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, word_lists), np.int64, len(word_lists)), out=starts[1:])
    flat = map(_HASHES.__getitem__, itertools.chain.from_iterable(word_lists))
    return np.fromiter(flat, np.uint64, int(starts[-1])), starts


def gram_hashes(hashes: np.ndarray, starts: np.ndarray, n: int, whole_if_shorter: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of every text (word order matters), and where each text's grams start.

    A text shorter than n words gives one gram of all its words when `whole_if_shorter`, else none;
    its hash is that of the same words as an m-gram (m = its length) of a longer text."""
    lengths = np.diff(starts)
    counts = np.maximum(lengths - n + 1, 1 if whole_if_shorter else 0)
    counts[lengths == 0] = 0
    gram_starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(counts, out=gram_starts[1:])
    text_of = np.repeat(np.arange(len(lengths)), counts)
    first = starts[:-1][text_of] + (np.arange(gram_starts[-1]) - gram_starts[:-1][text_of])
    last = starts[1:][text_of] - 1
    grams = np.minimum(lengths, n)[text_of].astype(np.uint64)
    for j in range(n):
        within = first + j <= last  # a short text's gram stops at its last word
        grams = np.where(within, mix(grams ^ hashes[np.minimum(first + j, last)]), grams)
    return grams, gram_starts
