"""Answers, verdicts, grades and difficulty ratings are cached under the output folder, keyed by
everything that changes them, so a rerun with the same settings asks no model anything it has asked
before (the judge is the most expensive role with a real API) and never reuses a stale answer.

`<kind>/<settings key>/` (kind: answers, verdicts, grades, ratings) holds the rows of one model under
one set of generation settings: the model and what identifies its files (a local folder's file
sizes and times, an s3:// folder's ETags and sizes), backend, prompt format and the text of the
templates the request is built from, the device and dtype the engine runs with (`auto` resolved as
the actors resolve it), vLLM's extra engine options, prompt limit, seed, endpoint and sampling.
Each row carries `request`, a digest of exactly what was asked (the item id and instruction of an
answer; the id, order and whole prompt of a verdict, so a changed answer is judged again). A rerun
reuses every row whose request is asked again; new requests and those that failed as requests
(`generation_failed:*`, e.g. a server error) are generated again. A verdict the judge wrote but
that could not be read is kept: the same judge at the same settings would write it again.
Resources (actors, CPUs, batch sizes) do not change a result and are not part of the key.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.dataset as ds

from common import storage
from common.models import model_files
from eval.budget import TRUNCATING_BACKENDS
from eval.calls import GENERATION_FAILED
from generation.config import (
    GENERATION_EXECUTION_KEYS,
    GenerationConfig,
    SamplingConfig,
)
from generation.prompts import PLAIN_TEMPLATE, TRAINED_FORMATS

# A model's generation keys that no cached row depends on: the resource keys, less the two that
# `generation_settings` reads (the endpoint asked; num_gpus picks the device vllm takes). The
# pipeline's evaluate fingerprint leaves them out, so it changes exactly when these caches do.
UNCACHED_KEYS = tuple(key for key in GENERATION_EXECUTION_KEYS if key not in ("openai.base_url", "num_gpus"))


def model_signature(model: str, key: str = "model") -> list | None:
    """See common.models.model_files: retraining or replacing the model under its name changes the key."""
    return model_files(model, key)


def format_template(gen: GenerationConfig) -> str:
    """The text of the prompt format's own template (a chat template is in the tokenizer's files)."""
    if gen.backend == "echo" or gen.prompt_format in ("chat", "raw"):
        return ""
    return TRAINED_FORMATS.get(gen.prompt_format, PLAIN_TEMPLATE) + ("<bos>" if gen.prompt_format in TRAINED_FORMATS
                                                                     else "")


def generation_settings(gen: GenerationConfig, sampling: SamplingConfig, engine: dict | None = None,
                        templates: tuple[str, ...] = ()) -> dict:
    """What changes a model's output (answers, verdicts, grades and ratings alike). `engine`: the
    device and dtype its engine resolved (see resolve_engines); `templates`: the texts the job
    builds this kind of request from, beyond what each request's key holds."""
    engine = engine or {}
    texts = (format_template(gen), *templates)
    return {"backend": gen.backend, "model": gen.model, "model_files": model_signature(gen.model),
            "prompt_format": gen.prompt_format, "dtype": engine.get("dtype", gen.dtype),
            "device": engine.get("device", gen.device), "max_prompt_tokens": gen.max_prompt_tokens,
            "seed": gen.seed, "endpoint": gen.openai.base_url if gen.backend == "openai" else None,
            "vllm_extra": gen.vllm.extra if gen.backend == "vllm" else None,
            "templates": hashlib.blake2b(json.dumps(texts).encode(), digest_size=8).hexdigest(),
            "sampling": sampling.model_dump(mode="json")}


def _engine_of(backend: str, device: str, dtype: str, num_gpus: float) -> dict:
    """The device and dtype an engine of these settings takes where this runs (as hf.py and vllm.py choose)."""
    from generation.devices import resolve_dtype, use_cuda

    cuda = use_cuda(device) if backend == "hf" else num_gpus > 0 or device == "cuda"
    return {"device": "cuda" if cuda else "cpu", "dtype": resolve_dtype(dtype, cuda)}


def resolve_engines(roles: dict[str, GenerationConfig]) -> dict[str, dict]:
    """Per role on hf or vllm, the device and dtype its actors will run with. Where `auto` leaves it
    to the hardware (dtype auto: bf16 or fp32/fp16 by the CPU or GPU; hf's device auto: a GPU if
    one is visible), one Ray task with the role's resources resolves it as the actors will, all
    roles at once. Explicit settings are taken as they are."""
    import ray

    probes, engines = {}, {}
    for role, gen in roles.items():
        if gen.backend not in TRUNCATING_BACKENDS:
            continue
        args = (gen.backend, gen.device, gen.dtype, gen.num_gpus)
        if gen.dtype != "auto" and (gen.backend == "vllm" or gen.device != "auto"):
            engines[role] = _engine_of(*args)
            continue
        if args not in probes:
            probes[args] = ray.remote(num_cpus=min(gen.num_cpus, 1), num_gpus=gen.num_gpus)(_engine_of).remote(*args)
        engines[role] = probes[args]
    return {role: ray.get(e) if isinstance(e, ray.ObjectRef) else e for role, e in engines.items()}


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
