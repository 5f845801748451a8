"""Benchmark contamination: training rows that copy an evaluation item, by word n-gram overlap.

An instruction or response shares an n-gram (13 words by default, as is common practice) with a
test item; an item shorter than n words counts when all of its words appear in a row in that
order. Words are Unicode words of any script (evol/ngrams.py), so case, spacing and punctuation
cannot hide a copy. The test sets are read on the driver (hundreds to thousands of items) into an
index of n-gram hashes that every worker checks its rows against.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from common import storage
from common.config import UserError
from common.rows import BOM, SUPPORTED_SUFFIXES, jsonl_lines, resolve_bundled
from evol.ngrams import gram_hashes, text_words, word_hashes

WIZARDLM_TESTSET = "bundled:wizardlm_testset.jsonl"  # eval/data, the evaluate job's default


@dataclass(frozen=True)
class EvalSet:
    name: str  # file name without its suffix: what `contaminated_by` names ("wizardlm_testset:12")
    path: str  # as configured
    sha256: str  # of the file's bytes: the evaluate job recognises its test set by it
    items: list[tuple[str, str]]  # (item id, text) in file order


@dataclass
class NgramIndex:
    """Sorted n-gram hashes of the test items, each with the first item (in set and file order)
    that holds it; `lengths`: the gram lengths to look for (n, and those of shorter items)."""
    n: int
    grams: np.ndarray
    owners: np.ndarray
    labels: list[str]  # "set:item id" per owner index
    lengths: list[int] = field(default_factory=list)


def _rows(data: bytes, path: str) -> list[dict]:
    """The objects of a jsonl / json / parquet file (anything else in it is not an item)."""
    if path.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if path.lower().endswith(".json"):
        rows = json.loads(data.removeprefix(BOM).decode("utf-8", errors="replace"))
        return rows if isinstance(rows, list) else [rows]
    return [json.loads(line.decode("utf-8", errors="replace")) for _, line in jsonl_lines(data)]


def item_text(row, fields: list[str]) -> str:
    """The text of an item: every configured field it has, strings or lists of strings (a
    conversation's turns), joined by blank lines."""
    if not isinstance(row, dict):
        return ""
    parts = []
    for name in fields:
        value = row.get(name)
        values = value if isinstance(value, list) else [value]
        parts.extend(v for v in values if isinstance(v, str) and v.strip())
    return "\n\n".join(parts)


def read_testset(path: str, text_fields: list[str], id_fields: list[str], key: str) -> list[EvalSet]:
    """One EvalSet per file of `path` (a file or a folder of jsonl / json / parquet, local or s3://)."""
    resolved = resolve_bundled(path, "eval")
    if not storage.exists(resolved):
        raise UserError(f"{key}: {path} does not exist")
    files = ([f for f in storage.list_files(resolved) if f.lower().endswith(SUPPORTED_SUFFIXES)]
             if storage.is_dir(resolved) else [resolved])
    sets = []
    for file in files:
        filesys, inner = storage.filesystem(file)
        with filesys.open_input_stream(inner) as stream:
            data = stream.read()
        try:
            rows = _rows(data, file)
        except (ValueError, OSError) as exc:
            raise UserError(f"{key}: cannot read {file}: {str(exc).splitlines()[0]}") from None
        name = os.path.splitext(os.path.basename(file))[0]
        items = [(_item_id(row, id_fields, line), item_text(row, text_fields)) for line, row in enumerate(rows, 1)]
        sets.append(EvalSet(name, path, hashlib.sha256(data).hexdigest(), [(i, t) for i, t in items if t]))
    return sets


def _item_id(row, id_fields: list[str], line: int) -> str:
    found = next((row[name] for name in id_fields if isinstance(row, dict) and row.get(name) is not None), None)
    return str(found) if found is not None else str(line)


def build_index(sets: list[EvalSet], n: int) -> NgramIndex:
    """Every item's n-grams (an item shorter than n words: its whole word sequence)."""
    labels = [f"{s.name}:{item_id}" for s in sets for item_id, _ in s.items]
    texts = [text for s in sets for _, text in s.items]
    hashes, starts = word_hashes([text_words(t) for t in texts])
    grams, first = gram_hashes(hashes, starts, n)
    owners = np.repeat(np.arange(len(texts)), np.diff(first))
    order = np.lexsort((owners, grams))  # by gram, then the earliest item
    grams, owners = grams[order], owners[order]
    keep = np.ones(len(grams), dtype=bool)
    keep[1:] = grams[1:] != grams[:-1]
    lengths = sorted({n} | {int(m) for m in np.diff(starts) if 0 < m < n})
    return NgramIndex(n, grams[keep], owners[keep], labels, lengths)


def contaminated_by(texts: list[list[str]], index: NgramIndex) -> list[str | None]:
    """For each row (its texts: instruction, response), the label of the earliest test item it
    shares a gram with, or None."""
    flat = [text_words(t) for row in texts for t in row if t]
    row_of = np.array([r for r, row in enumerate(texts) for t in row if t], dtype=np.int64)
    best = np.full(len(texts), len(index.labels), dtype=np.int64)
    if not flat or not len(index.grams):
        return [None] * len(texts)
    hashes, starts = word_hashes(flat)
    for n in index.lengths:
        grams, first = gram_hashes(hashes, starts, n, whole_if_shorter=False)
        at = np.minimum(np.searchsorted(index.grams, grams), len(index.grams) - 1)
        hit = index.grams[at] == grams
        text_of = np.repeat(np.arange(len(flat)), np.diff(first))
        np.minimum.at(best, row_of[text_of[hit]], index.owners[at[hit]])
    return [index.labels[b] if b < len(index.labels) else None for b in best]
