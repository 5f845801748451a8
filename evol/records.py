"""Column names and Arrow schemas of the evolve job's rows: one place, used everywhere."""
from __future__ import annotations

import pyarrow as pa

from evol.operations import stable_hash

KEPT, ELIMINATED, QUARANTINED, ERROR = "kept", "eliminated", "quarantined", "error"
# Kept by evolution, then left out of the training set by the finish stage (evol/curation.py): a near
# copy of an earlier record (`duplicate_of`) or a copy of an evaluation item (`contaminated_by`).
DUPLICATE, CONTAMINATED = "duplicate", "contaminated"
SURVIVED = (KEPT, DUPLICATE, CONTAMINATED)  # kept by the paper's rules: lineage and pass rates count these
SEED_OP = "seed"

# A seed as read from the user's file, before any model sees it. `error` marks a bad row.
SEED_SCHEMA = pa.schema([
    ("seed_id", pa.string()), ("instruction", pa.string()), ("input", pa.string()),
    ("response", pa.string()), ("source", pa.string()), ("line", pa.int64()),
    ("error", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
])

# Every row the job writes: seeds used (round 0), candidates of each round, quarantined seeds.
# `response_truncated`: the response was cut by its token limit. `response_reason`: the answer
# rule (2 or 3) a kept seed's generated answer fails; the seed still evolves, its answer is not
# trained on. See `in_training_set`.
RECORD_SCHEMA = pa.schema([
    ("id", pa.string()), ("root_id", pa.string()), ("parent_id", pa.string()),
    ("round", pa.int64()), ("op", pa.string()),
    ("instruction", pa.string()), ("input", pa.string()), ("response", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("equality", pa.string()), ("equality_answer", pa.string()), ("response_truncated", pa.bool_()),
    ("response_reason", pa.string()),
    ("equality_method", pa.string()), ("equality_margin", pa.float64()),
    ("duplicate_of", pa.string()), ("contaminated_by", pa.string()),
    ("instruction_tokens", pa.int64()), ("response_tokens", pa.int64()),
    ("prompt_tokens", pa.int64()), ("generated_tokens", pa.int64()), ("requests", pa.int64()),
    ("gen_seconds", pa.float64()), ("model", pa.string()), ("source", pa.string()), ("line", pa.int64()),
    ("raw", pa.string()),
])

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
TRAINING_SCHEMA = pa.schema([
    ("id", pa.string()), ("root_id", pa.string()), ("round", pa.int64()), ("op", pa.string()),
    ("instruction", pa.string()), ("input", pa.string()), ("response", pa.string()),
    ("messages", MESSAGES_TYPE),
])


def flag_is_set(value) -> bool:
    """A nullable bool as read back: None (python rows) and NaN (numpy batches) are False."""
    return value is not None and value == value and bool(value)


def in_training_set(row: dict, train_on_truncated: bool) -> bool:
    """Kept rows whose response passed the answer rules and, unless allowed, was not cut off."""
    rejected = isinstance(row["response_reason"], str) and row["response_reason"] != ""
    return (row["status"] == KEPT and not rejected
            and (train_on_truncated or not flag_is_set(row["response_truncated"])))


def candidate_id(parent_id: str, round_index: int, operation: str) -> str:
    """Stable across reruns: the same parent evolved in the same round with the same op."""
    return f"r{round_index}-{stable_hash(parent_id, round_index, operation):016x}"


def empty_record(**values) -> dict:
    row = {name: None for name in RECORD_SCHEMA.names}
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"not record columns: {sorted(unknown)}")
    row.update(values)
    return row


def records_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
