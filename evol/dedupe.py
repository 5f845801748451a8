"""Near-duplicate instructions: MinHash signatures, LSH bands, verification and clusters, as pure
functions over numpy arrays (the Ray tasks that apply them to the whole output are evol/curation.py).

Two instructions are near-duplicates when the Jaccard similarity of their word shingles (evol/
ngrams.py: Unicode words, any script) reaches `dedupe.threshold`. MinHash estimates it; LSH
puts two instructions in one bucket when all values of one band of their signatures agree, with
the band count and width chosen for the threshold (`lsh_params`). Every pair a bucket proposes is
checked against the threshold (the one-byte sketches of both signatures), so a chance collision
never merges two unrelated instructions, and the checked pairs are joined into clusters
(transitively). Each cluster keeps its earliest record: lowest round, then lowest id.
"""
from __future__ import annotations

import functools

import numpy as np

from evol.ngrams import gram_hashes, mix, text_words, word_hashes

SKETCH_LEVELS = 256  # a sketch keeps one byte of each MinHash value (b-bit minwise hashing, b = 8)
_CHUNK_BYTES = 1 << 19  # a matrix of (shingles x permutations) that stays in a core's cache


@functools.cache
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the hash family h_i(x) = top 32 bits of (a_i * x + b_i) mod 2^64, a_i odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    return a, rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)


def signatures(texts: list[str], shingle_words: int, num_perm: int, seed: int = 0) -> np.ndarray:
    """MinHash signatures, uint32 [texts, num_perm], of the texts' word shingles."""
    hashes, starts = word_hashes([text_words(t) for t in texts])
    shingles, first = gram_hashes(hashes, starts, shingle_words)
    a, b = _permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    chunk = max(1, _CHUNK_BYTES // (8 * num_perm))
    buffer = np.empty((chunk, num_perm), dtype=np.uint64)  # reused: a new array per chunk costs page faults
    lo = 0
    while lo < len(texts):  # whole texts per chunk, at least one
        hi = max(lo + 1, int(np.searchsorted(first, first[lo] + chunk, side="right")) - 1)
        size = first[hi] - first[lo]
        values = buffer[:size] if size <= chunk else np.empty((size, num_perm), dtype=np.uint64)
        np.multiply(shingles[first[lo]:first[hi], None], a, out=values)  # wraps mod 2^64, as meant
        values += b
        # the top 32 bits of the least value are the least of the top 32 bits: shift once per text
        out[lo:hi] = np.minimum.reduceat(values, first[lo:hi] - first[lo], axis=0) >> np.uint64(32)
        lo = hi
    return out


@functools.cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that minimise the chance of missing a pair at or above the threshold
    plus the chance of proposing one below it (the areas under LSH's S-curve on each side)."""
    s = np.linspace(0.0, 1.0, 401)
    below, above = s <= threshold, s >= threshold
    best, chosen = np.inf, (1, num_perm)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            proposed = 1 - (1 - s ** rows) ** bands
            error = np.trapezoid(proposed[below], s[below]) + np.trapezoid(1 - proposed[above], s[above])
            if error < best:
                best, chosen = error, (bands, rows)
    return chosen


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """int64 [texts, bands]: one key per band, equal when the band's values are (the band's number
    is in the key, so band 1 of one text never meets band 2 of another)."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    for band in range(bands):
        key = np.full(len(sigs), np.uint64(band))
        for column in sigs[:, band * rows:(band + 1) * rows].T.astype(np.uint64):
            key = mix(key ^ column)
        keys[:, band] = key
    return keys.view(np.int64)


def sketches(sigs: np.ndarray) -> np.ndarray:
    """uint8 [texts, num_perm]: one byte of each MinHash value, enough to check a proposed pair."""
    return (sigs & 0xFF).astype(np.uint8)


def similarity(sketch_a: np.ndarray, sketch_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of sketches, row by row (the last axis): agreeing bytes, less
    the 1/256 that agree by chance when the values differ."""
    agree = np.count_nonzero(sketch_a == sketch_b, axis=-1) / sketch_a.shape[-1]
    return np.maximum(0.0, (agree - 1 / SKETCH_LEVELS) / (1 - 1 / SKETCH_LEVELS))


def components(count: int, edges: np.ndarray) -> np.ndarray:
    """The smallest node index of each node's connected component (nodes 0..count-1, edges [E, 2]):
    min-label propagation with pointer jumping, all in numpy."""
    labels = np.arange(count)
    if len(edges) == 0:
        return labels
    while True:
        lowest = np.minimum(labels[edges[:, 0]], labels[edges[:, 1]])
        new = labels.copy()
        np.minimum.at(new, edges[:, 0], lowest)
        np.minimum.at(new, edges[:, 1], lowest)
        while not np.array_equal(new, new[new]):
            new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new
