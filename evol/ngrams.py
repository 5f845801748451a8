"""Word n-grams as 64-bit hashes, for near-duplicate detection and the contamination check.

Words are `elimination.words`: Unicode words of any script (NFKC, case-folded), each ideograph a
word of its own, so a Chinese sentence gives character n-grams and spacing or case cannot hide a
copy. Hashes are stable across processes and machines (blake2b of the word, then a 64-bit mixer),
never Python's per-process `hash`.
"""
from __future__ import annotations

import hashlib

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


def text_words(text: str) -> list[str]:
    """The words of a text; a text without any (symbols only) is one word: itself, stripped."""
    return words(text) or [text.strip()]


def word_hashes(word_lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """All words of many texts as one uint64 array, and where each text starts in it (plus the end).
    Each distinct word is hashed once."""
    cache: dict[str, int] = {}
    flat = []
    for ws in word_lists:
        for w in ws:
            if w not in cache:
                cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            flat.append(cache[w])
    starts = np.zeros(len(word_lists) + 1, dtype=np.int64)
    np.cumsum([len(ws) for ws in word_lists], out=starts[1:])
    return np.array(flat, dtype=np.uint64), starts


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
