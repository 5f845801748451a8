"""Reading seeds on Ray: files in sorted order, jsonl in pieces, every row tagged with its bucket.

Input rows are counted where they are read (one small JSON per file under `_read/`), apart
from anything the job writes later, so the end-of-job check can catch a lost row.
"""
from __future__ import annotations

import json
from typing import Iterator

import pyarrow as pa

from common import storage
from common.rows import resolve_bundled
from evol.config import SeedsConfig
from evol.operations import stable_hash
from evol.records import SEED_SCHEMA
from evol.resume import bucket_of
from evol.seeds import (SUPPORTED_SUFFIXES, SeedFields, jsonl_pieces, mark_duplicates, parquet_pieces, parse_jsonl,
                        parse_seed_file, seed_table, source_name)

READ_COUNTS = "_read"


def resolve_seed_path(path: str) -> str:
    """Absolute, as storage.list_files names a folder's files: ids are the files' paths under it."""
    return storage.absolute(resolve_bundled(path, "evol"))


def seed_files(path: str) -> list[str]:
    """The seed file, or a folder's seed files in sorted order (the order `seeds.limit` counts in)."""
    if not storage.is_dir(path):
        return [path]
    return [f for f in storage.list_files(path) if f.lower().endswith(SUPPORTED_SUFFIXES)]


def is_jsonl(path: str) -> bool:
    return path.lower().endswith((".jsonl", ".ndjson"))


def file_rows(path: str, source: str, fields: SeedFields, piece_bytes: int) -> Iterator[list[dict]]:
    """The seed rows of one file, a piece at a time, never the whole file in memory: jsonl in
    pieces of whole lines (exact line numbers), parquet a record batch at a time; a .json array
    is parsed whole (JSON has no record boundaries to cut at: use jsonl for big inputs)."""
    filesys, inner = storage.filesystem(path)
    if path.lower().endswith(".parquet"):
        with filesys.open_input_file(inner) as file:
            yield from parquet_pieces(file, source, fields)
        return
    with filesys.open_input_stream(inner) as stream:
        if not is_jsonl(path):
            yield parse_seed_file(stream.read(), source, fields)
            return
        for first_line, piece in jsonl_pieces(stream, piece_bytes):
            yield parse_jsonl(piece, source, fields, first_line)


def read_seed_files(batch: pa.Table, fields: SeedFields, root: str, piece_bytes: int,
                    limit: int | None) -> Iterator[pa.Table]:
    """Ray Data generator UDF. Needs `path` (seed files, in order); yields SEED_SCHEMA tables, one
    per piece. Ids and `source` are relative to `root` (seeds.path). Duplicate ids inside a piece
    are marked here; `limit`: only the first N rows, in the order of the batch's files and lines."""
    for path in batch.column("path").to_pylist():
        for rows in file_rows(path, source_name(path, root), fields, piece_bytes):
            rows = mark_duplicates(rows)
            if limit is not None:
                rows, limit = rows[:limit], limit - min(limit, len(rows))
            yield seed_table(rows)
            if limit == 0:
                return


def bucketed_seed_files(batch: pa.Table, fields: SeedFields, root: str, piece_bytes: int, limit: int | None,
                        buckets: int, done: frozenset[int], counts_dir: str | None) -> Iterator[pa.Table]:
    """`read_seed_files` plus a `bucket` column; rows of finished buckets are dropped (a resumed
    run), and every file's rows are counted into `counts_dir` before anything is dropped."""
    counts: dict[str, dict] = {}
    if limit is None:  # every file gets a count, an empty one too: a missing count is a file never read
        for path in batch.column("path").to_pylist():
            counts[source_name(path, root)] = {"rows": 0, "buckets": set()}
    for table in read_seed_files(batch, fields, root, piece_bytes, limit):
        ids = table.column("seed_id").to_pylist()
        numbers = [bucket_of(seed_id, buckets) for seed_id in ids]
        for source in set(table.column("source").to_pylist()):
            counts.setdefault(source, {"rows": 0, "buckets": set()})
        for source, number in zip(table.column("source").to_pylist(), numbers):
            counts[source]["rows"] += 1
            counts[source]["buckets"].add(number)
        keep = [number not in done for number in numbers]
        yield table.append_column("bucket", pa.array(numbers, pa.int64())).filter(pa.array(keep, pa.bool_()))
    if counts_dir is not None:
        for source, count in counts.items():
            storage.write_json(storage.join(counts_dir, f"{stable_hash(source):016x}.json"),
                               {"source": source, "rows": count["rows"], "buckets": sorted(count["buckets"])})


def read_counts(counts_dir: str) -> tuple[int, set[int], set[str]]:
    """Rows read, the buckets they fell in and the files counted, over the files' count records."""
    rows, buckets, sources = 0, set(), set()
    for path in storage.list_files(counts_dir):
        count = json.loads(storage.read_text(path))
        rows += count["rows"]
        buckets.update(count["buckets"])
        sources.add(count["source"])
    return rows, buckets, sources


def unread_files(path: str, counted: set[str]) -> list[str]:
    """Seed files with no count record: their read task failed (rows that vanished unseen)."""
    return sorted(set(source_name(f, path) for f in seed_files(path)) - counted)


# One row per bucket: a call of the evolve actor gets whole buckets whatever its batch size (Ray
# Data requires a batch size in rows for GPU actors, and a bucket is written by one call only).
BUCKET_SCHEMA = pa.schema([("bucket", pa.int64()), ("seeds", pa.list_(pa.struct(list(SEED_SCHEMA))))])


def dedupe_bucket(group: pa.Table) -> pa.Table:
    """One bucket's rows as one BUCKET_SCHEMA row: duplicates share an id and so a bucket, so
    marking here is exact."""
    rows = group.to_pylist()
    bucket = rows[0]["bucket"]
    seeds = seed_table(mark_duplicates(rows)).to_pylist()
    return pa.Table.from_pylist([{"bucket": bucket, "seeds": seeds}], schema=BUCKET_SCHEMA)


def seed_rows(batch: pa.Table) -> Iterator[tuple[int, list[dict]]]:
    """(bucket, its SEED_SCHEMA rows) of each BUCKET_SCHEMA row."""
    for row in batch.to_pylist():
        yield row["bucket"], row["seeds"]


def read_seed_buckets(path: str, cfg: SeedsConfig, buckets: int = 256, done: frozenset[int] = frozenset(),
                      counts_dir: str | None = None, partitions: int | None = None):
    """Dataset of BUCKET_SCHEMA rows: every input row in its bucket's row, bad rows marked (never
    dropped); buckets in `done` are left out. `partitions`: of the shuffle by bucket (default
    seeds.dedupe_partitions).

    Without a limit every file is read by a task of its own. With one, a single task reads the
    files in sorted order and stops after `limit` rows: the same rows every run."""
    import ray

    fields = cfg.fields()
    files = seed_files(path)
    paths = ray.data.from_items([{"path": f} for f in files],
                                override_num_blocks=1 if cfg.limit is not None else len(files))
    rows = paths.map_batches(
        bucketed_seed_files, batch_size=None if cfg.limit is not None else 1, batch_format="pyarrow",
        num_cpus=0.25, fn_kwargs=dict(fields=fields, root=path, piece_bytes=cfg.piece_bytes, limit=cfg.limit,
                                      buckets=buckets, done=done, counts_dir=counts_dir))
    by_bucket = rows.groupby("bucket", num_partitions=partitions or cfg.dedupe_partitions)
    return by_bucket.map_groups(dedupe_bucket, batch_format="pyarrow", num_cpus=0)
