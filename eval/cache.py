"""Answers are cached under the output folder, keyed by everything that changes them.

`answers/<settings key>/` holds the answers of one model under one set of generation settings
(model and its files' sizes and times, backend, prompt format, dtype, prompt limit, seed,
endpoint, sampling). A rerun with the same settings reuses every answer whose item id and
instruction are unchanged; new or changed items, and failed answers, are generated again.
Resources (actors, CPUs, batch sizes) do not change an answer and are not part of the key.
"""
from __future__ import annotations

import hashlib
import json
import os

import pyarrow.dataset as ds

from common import storage
from eval.rows import ANSWER_SCHEMA
from generation.config import GenerationConfig, SamplingConfig


def model_signature(model: str) -> list | None:
    """A local model folder's file names, sizes and modification times: retraining into the same
    folder changes the key. None for aliases, s3:// folders and hub ids (named by themselves)."""
    folder = os.path.expanduser(model)
    if not os.path.isdir(folder):
        return None
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    return [[e.name, e.stat().st_size, int(e.stat().st_mtime)] for e in entries if e.is_file()]


def answer_settings(gen: GenerationConfig, sampling: SamplingConfig) -> dict:
    return {"backend": gen.backend, "model": gen.model, "model_files": model_signature(gen.model),
            "prompt_format": gen.prompt_format, "dtype": gen.dtype, "max_prompt_tokens": gen.max_prompt_tokens,
            "seed": gen.seed, "endpoint": gen.openai.base_url if gen.backend == "openai" else None,
            "sampling": sampling.model_dump(mode="json")}


def settings_key(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def answers_dir(out_dir: str, key: str) -> str:
    return storage.join(out_dir, "answers", key)


def read_answers(folder: str) -> list[dict]:
    """Every answer row stored in a cache folder (possibly from several runs); [] when none."""
    if not storage.is_dir(folder):
        return []
    filesys, inner = storage.filesystem(folder)
    dataset = ds.dataset(inner, filesystem=filesys, format="parquet", schema=ANSWER_SCHEMA,
                         exclude_invalid_files=True)
    return dataset.to_table().to_pylist()


def best_answers(cached: list[dict], items: list[dict]) -> dict[str, dict]:
    """The stored answer of each current item (same id and instruction), by id: a good one when
    there is one, else a failed one (so the failure is reported). Only missing or failed answers
    are generated again, so an id has at most one good row."""
    wanted = {item["id"]: item["instruction"] for item in items}
    found: dict[str, dict] = {}
    for row in cached:
        if wanted.get(row["id"]) == row["instruction"] and (row["id"] not in found or row["error"] is None):
            found[row["id"]] = row
    return found
