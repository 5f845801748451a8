"""What an evolve run's results depend on: its config with every path resolved, and the fingerprints of
its inputs (seed files, model files). Saved in the run folder; a rerun that resumes must match it.

Fingerprints, and why:
- seed files: size and sha256 of the whole file (local) or the object's ETag (s3): one edited row
  changes the ids or texts of the seeds, so it must be seen wherever it is in the file.
- model folders: every file's size, plus sha256 of the whole file up to 1 MiB (configs, tokenizer)
  and of its first and last MiB above that (weights). A retrained or fine-tuned model changes
  weights everywhere, so a sample of each shard finds it in milliseconds where hashing 14 GB would
  take a minute; mtimes are not used, as a copy or a new download of the same model changes them
  but not the results. An s3 folder: each object's ETag. The bundled model: its GGUF file. A hub id
  is recorded by name only (the driver may not reach the hub).
"""
from __future__ import annotations

import hashlib
import os

from common import storage
from common.models import SMALL_MODEL_ALIAS, pin_local_model, small_model_gguf
from common.rows import BUNDLED_PREFIX
from common.s3 import make_client, split_s3
from evol.config import EvolveConfig
from evol.reading import resolve_seed_path, seed_files
from evol.resume import config_dict
from evol.seeds import source_name
from generation import GenerationConfig

SAMPLE_BYTES = 1 << 20


def with_absolute_paths(cfg: EvolveConfig) -> EvolveConfig:
    """Ray workers run in folders of their own: local paths must not be relative to the driver's."""
    return cfg.model_copy(update={
        "seeds": cfg.seeds.model_copy(update={"path": storage.absolute(resolve_seed_path(cfg.seeds.path))}),
        "output": cfg.output.model_copy(update={"path": storage.absolute(cfg.output.path)}),
        "generation": cfg.generation.with_local_model_pinned(),
        "judge": cfg.judge.with_local_model_pinned() if cfg.judge is not None else None,
    })


def run_identity(cfg: EvolveConfig) -> dict:
    """The config as saved and compared (paths resolved, `bundled:` kept: the package's folder differs
    between installs), with an `inputs` section of fingerprints."""
    saved = config_dict(with_absolute_paths(cfg))
    if cfg.seeds.path.startswith(BUNDLED_PREFIX):
        saved["seeds"]["path"] = cfg.seeds.path
    seeds = resolve_seed_path(cfg.seeds.path)
    inputs = {"seeds": {source_name(f, seeds): file_fingerprint(f) for f in seed_files(seeds)},
              "generation": model_fingerprint(cfg.generation)}
    if cfg.judge is not None:
        inputs["judge"] = model_fingerprint(cfg.judge)
    return saved | {"inputs": inputs}


def file_fingerprint(path: str) -> str:
    """`size:sha256` of a local file, `etag:ETAG` of an s3 object."""
    if path.startswith("s3://"):
        key = split_s3(path)[1]
        return f"etag:{s3_etags(path).get(key, 'missing')}"
    filesys, inner = storage.filesystem(path)
    digest, size = hashlib.sha256(), 0
    with filesys.open_input_stream(inner) as stream:
        while chunk := stream.read(SAMPLE_BYTES * 8):
            digest.update(chunk)
            size += len(chunk)
    return f"{size}:{digest.hexdigest()}"


def model_fingerprint(gen: GenerationConfig) -> dict[str, str]:
    """Fingerprints of the model files a local engine loads (see the module docstring); {} for
    backends that load none."""
    return model_folder_fingerprint(gen.model) if gen.backend in ("hf", "vllm") else {}


def model_folder_fingerprint(model: str) -> dict[str, str]:
    """A model as a config names it (alias, local or s3:// folder, hub id): see the module docstring."""
    if model == SMALL_MODEL_ALIAS:
        gguf = small_model_gguf()
        return {gguf.name: sampled_fingerprint(str(gguf))}
    if model.startswith("s3://"):
        prefix = split_s3(model)[1].rstrip("/") + "/"
        return {key[len(prefix):]: f"etag:{etag}" for key, etag in s3_etags(model.rstrip("/") + "/").items()}
    folder = pin_local_model(model)
    if not os.path.isdir(folder):
        return {}  # a hub id: its name is in the config
    return {os.path.relpath(path, folder): sampled_fingerprint(path) for path in _files_under(folder)}


def _files_under(folder: str) -> list[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)


def sampled_fingerprint(path: str) -> str:
    """`size:sha256` of the whole file up to 1 MiB, else of its first and last MiB."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        if size <= SAMPLE_BYTES:
            digest.update(file.read())
        else:
            digest.update(file.read(SAMPLE_BYTES))
            file.seek(size - SAMPLE_BYTES)
            digest.update(file.read(SAMPLE_BYTES))
    return f"{size}:{digest.hexdigest()}"


def s3_etags(path: str) -> dict[str, str]:
    """ETag of every object whose key starts with the s3:// path's key, by key."""
    bucket, prefix, access_key, secret_key = split_s3(path)
    pages = make_client(access_key, secret_key).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["ETag"].strip('"') for page in pages for item in page.get("Contents", [])}
