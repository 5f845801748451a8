"""Deterministic shards ("buckets") with completion by existence, so that a killed job resumes.

Every seed belongs to bucket `stable_hash(seed_id) % buckets`. An actor writes all records of
a bucket as one file, `records/bucket-NNNNN.parquet`, atomically, when the last chain of the
bucket ends: a bucket file is complete or absent. A rerun skips the buckets whose files exist
and does the others; duplicates share an id and so a bucket, which keeps duplicate detection
exact. A rerun must use the same config (the keys that change results): `config_changes` says
which keys differ.
"""
from __future__ import annotations

import re

from evol.operations import stable_hash
from generation.config import GENERATION_EXECUTION_KEYS

BUCKET_FILE = re.compile(r"bucket-(\d{5})\.parquet")

# Keys that change how fast the job runs, where, or how its cost is priced, not what it writes: a rerun
# may change them (lowering vllm.gpu_memory_utilization after an out-of-memory must not block a resume).
EXECUTION_KEYS = ("ray.", "cost.", "output.overwrite", "seeds.dedupe_partitions", "seeds.piece_bytes",
                  "evolve.retry_errors", "evolve.engine_failure_limit", "evolve.rounds_ahead",
                  "evolve.fallback_rewrites",
                  *(f"{role}.{key}" for role in ("generation", "judge") for key in GENERATION_EXECUTION_KEYS))
INPUTS = "inputs"  # the section of fingerprints a run's saved config holds (evol/identity.py)


def bucket_of(seed_id: str, buckets: int) -> int:
    return stable_hash("bucket", seed_id) % buckets


def bucket_file(bucket: int) -> str:
    return f"bucket-{bucket:05d}.parquet"


def buckets_in(file_names: list[str]) -> set[int]:
    """Bucket numbers of the complete bucket files among `file_names` (temp files do not match)."""
    found = (BUCKET_FILE.fullmatch(name.rsplit("/", 1)[-1]) for name in file_names)
    return {int(match.group(1)) for match in found if match}


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys a user would type as overrides."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(before: dict, after: dict) -> list[str]:
    """Dotted keys whose values differ between two configs, execution-only keys left out. The
    fingerprints of a run saved before they were recorded are not compared."""
    if INPUTS not in before:
        after = {key: value for key, value in after.items() if key != INPUTS}
    old, new = flatten(before), flatten(after)
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return [key for key in changed if not key.startswith(EXECUTION_KEYS)]


def config_dict(cfg) -> dict:
    """The config as saved in the run folder and compared on a rerun."""
    return cfg.model_dump(mode="json")
