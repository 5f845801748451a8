"""Answers, verdicts and difficulty ratings are cached under the output folder, keyed by everything
that changes them, so a rerun with the same settings asks no model anything it has asked before
(the judge is the most expensive role with a real API).

`<kind>/<settings key>/` (kind: answers, verdicts, ratings) holds the rows of one model under one
set of generation settings (model and its files' sizes and times, backend, prompt format, dtype,
prompt limit, seed, endpoint, sampling). Each row carries `request`, a digest of exactly what was
asked (the item id and instruction of an answer; the id, order and whole prompt of a verdict, so
a changed answer is judged again). A rerun reuses every row whose request is asked again; new
requests and those that failed as requests (`generation_failed:*`, e.g. a server error) are
generated again. A verdict the judge wrote but that could not be read is kept: the same judge at
the same settings would write it again. Resources (actors, CPUs, batch sizes) do not change a
result and are not part of the key.
"""
from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.dataset as ds

from common import storage
from eval.calls import GENERATION_FAILED
from generation.config import GenerationConfig, SamplingConfig


def model_signature(model: str) -> list | None:
    """A local model folder's file names, sizes and modification times: retraining into the same
    folder changes the key. None for aliases, s3:// folders and hub ids (named by themselves)."""
    folder = os.path.expanduser(model)
    if not os.path.isdir(folder):
        return None
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    return [[e.name, e.stat().st_size, int(e.stat().st_mtime)] for e in entries if e.is_file()]


def generation_settings(gen: GenerationConfig, sampling: SamplingConfig) -> dict:
    """What changes a model's output (answers, verdicts and ratings alike)."""
    return {"backend": gen.backend, "model": gen.model, "model_files": model_signature(gen.model),
            "prompt_format": gen.prompt_format, "dtype": gen.dtype, "max_prompt_tokens": gen.max_prompt_tokens,
            "seed": gen.seed, "endpoint": gen.openai.base_url if gen.backend == "openai" else None,
            "sampling": sampling.model_dump(mode="json")}


def settings_key(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def request_key(*parts: str) -> str:
    """The digest of one request's inputs (parts joined unambiguously)."""
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=12).hexdigest()


def results_dir(out_dir: str, kind: str, key: str) -> str:
    return storage.join(out_dir, kind, key)


def read_rows(folder: str, schema: pa.Schema) -> list[dict]:
    """Every row stored in a cache folder (possibly from several runs); [] when none."""
    if not storage.is_dir(folder):
        return []
    filesys, inner = storage.filesystem(folder)
    dataset = ds.dataset(inner, filesystem=filesys, format="parquet", schema=schema, exclude_invalid_files=True)
    return dataset.to_table().to_pylist()


def must_ask_again(row: dict) -> bool:
    """A request that failed as a request (server error, timeout) is asked again on a rerun."""
    return bool(row["error"]) and row["error"].startswith(GENERATION_FAILED)


def best_rows(cached: list[dict], requests: set[str]) -> dict[str, dict]:
    """The stored row of each request asked now, by request: one that need not be asked again when
    there is one, else a failed one (so the failure is reported). Only missing or failed requests
    are generated again, so a request has at most one such row."""
    found: dict[str, dict] = {}
    for row in cached:
        key = row["request"]
        if key in requests and (key not in found or must_ask_again(found[key])):
            found[key] = row
    return found
