"""The evolve job's output folder: each bucket's files (records, training parquet and chat jsonl), and
reading the records back.
"""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from common import storage
from evol.records import ERROR, TRAINING_SCHEMA, in_training_set, records_table
from evol.resume import bucket_file, buckets_in
from evol.templates import user_turn
from generation.types import clean_text

JOB = "evolve"

def write_parquet(path: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(path, sink.getvalue())

def training_files(out: str, bucket: int) -> tuple[str, str]:
    name = bucket_file(bucket)
    return (storage.join(out, "training", "parquet", name),
            storage.join(out, "training", "jsonl", name.replace(".parquet", ".jsonl")))


def remove_file(path: str) -> None:
    """Delete a file if it is there (local or s3)."""
    filesys, inner = storage.filesystem(path)
    try:
        filesys.delete_file(inner)
    except FileNotFoundError:
        pass


def write_bucket(out: str, bucket: int, records: list[dict], train_on_truncated: bool) -> None:
    """The bucket's training rows (parquet + chat jsonl), then its records: a record file is the
    bucket's completion mark, so it is written last. A bucket written again without training rows
    removes its old training files (after any kill, the training files are those of the records, or the
    record file is one a rerun redoes)."""
    records = [{key: clean_text(value) if isinstance(value, str) else value for key, value in record.items()}
               for record in records]  # an error's detail may quote a server's text
    training = training_rows(records, train_on_truncated)
    parquet, jsonl = training_files(out, bucket)
    if training.num_rows:
        write_parquet(parquet, training)
        lines = (json.dumps({"id": row["id"], "messages": row["messages"]}, ensure_ascii=False) + "\n"
                 for row in training.select(["id", "messages"]).to_pylist())
        storage.write_bytes_atomic(jsonl, "".join(lines).encode())
    else:
        for path in (parquet, jsonl):
            remove_file(path)
    write_parquet(storage.join(out, "records", bucket_file(bucket)), records_table(records))


def training_file_check(out: str) -> tuple[int, list[str]]:
    """Rows the training parquet files hold (from their footers), and training files whose bucket has
    no record file."""
    recorded = buckets_in(storage.list_files(storage.join(out, "records")))
    rows, orphans = 0, []
    for kind in ("parquet", "jsonl"):
        for path in storage.list_files(storage.join(out, "training", kind)):
            name = path.rsplit("/", 1)[-1].replace(".jsonl", ".parquet")
            if buckets_in([name]) - recorded:
                orphans.append(path.rsplit("/", 1)[-1])
            elif kind == "parquet" and buckets_in([name]):
                filesys, inner = storage.filesystem(path)
                with filesys.open_input_file(inner) as file:
                    rows += pq.read_metadata(file).num_rows
    return rows, orphans

def read_bucket(out: str, bucket: int) -> list[dict]:
    """The records of a bucket written earlier (by an earlier run or an earlier try of this call); []."""
    path = storage.join(out, "records", bucket_file(bucket))
    if not storage.exists(path):
        return []
    filesys, inner = storage.filesystem(path)
    return pq.read_table(inner, filesystem=filesys).to_pylist()


def buckets_with_errors(records_dir: str) -> set[int]:
    """Buckets whose record file holds an `error` row (read a status column at a time, a few in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    def has_error(path: str) -> bool:
        filesys, inner = storage.filesystem(path)
        return ERROR in pq.read_table(inner, filesystem=filesys, columns=["status"]).column("status").to_pylist()

    files = record_files(records_dir)
    with ThreadPoolExecutor(max_workers=16) as pool:
        flags = list(pool.map(has_error, files))
    return buckets_in([path for path, flag in zip(files, flags) if flag])


def training_rows(records: list[dict], train_on_truncated: bool) -> pa.Table:
    """TRAINING_SCHEMA rows of the records `in_training_set`."""
    rows = []
    for row in records:
        if not in_training_set(row, train_on_truncated):
            continue
        messages = [{"role": "user", "content": user_turn(row["instruction"], row["input"])},
                    {"role": "assistant", "content": row["response"]}]
        rows.append({name: row.get(name) for name in TRAINING_SCHEMA.names if name != "messages"}
                    | {"messages": messages, "round": int(row["round"])})
    return pa.Table.from_pylist(rows, schema=TRAINING_SCHEMA)

def read_records(records_dir: str, columns: list[str] | None = None):
    """The records as a Ray dataset (complete bucket files only)."""
    import ray

    files = record_files(records_dir)
    return ray.data.read_parquet(files, columns=columns) if files else ray.data.from_items([])

def record_files(records_dir: str) -> list[str]:
    return [f for f in storage.list_files(records_dir) if buckets_in([f])]
