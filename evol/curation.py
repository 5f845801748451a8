"""The evolve job's finish stage: benchmark contamination, then near-duplicates, over every record
written (all seeds, all rounds); then each bucket's files rewritten to agree.

It runs after the last bucket is written and reads only the records. The rows it checks are the
training set's (`records.in_training_set`). Contamination comes first: a contaminated row is out,
and the near-duplicates of the rest keep one clean row per cluster.

    record files -> prepare tasks (a group of files each): training rows with the test item each
                    copies, LSH band keys and sketch -> blocks (the MinHash work: most of the time)
    blocks -> part tasks (key mod parts): the rows of each shared band key paired with its
              earliest, checked against the threshold with both sketches -> confirmed pairs
    confirmed pairs -> one cluster task (numpy): every member but the earliest a duplicate of it
    blocks + duplicates -> one decide task: every decision -> rewrite tasks (a group of buckets
              each): records, training parquet and jsonl rewritten where a record changed

No shuffle: the blocks stay in the object store and every part task reads all of them in shared
memory (zero-copy), keeps the band keys of its part and looks up ids, rounds and sketches only of
the few rows whose keys meet. Plain Ray tasks rather than Ray Data: a group-by moved every band key
through a shuffle, and even a map alone cost 70% more CPU than the work (the streaming executor,
its stats and autoscaling actors, at 200K records on 2 CPUs). Rows are numbered by their place in
the blocks; no decision depends on that numbering (a key's pairs are with its earliest row by round
and id), so any split into blocks and parts decides the same, and a small output runs the same
tasks in this process (`_Here`).

Idempotent: the statuses it set before are undone first (to it a duplicate or contaminated record
is a kept one), so a rerun recomputes the same decisions and rewrites no bucket that already says
them. A bucket is rewritten as it was first written, training files first and its record file
last, so a kill leaves a bucket old or (for the training files) new, and the rerun finishes it.
Driver memory does not grow with the records: it holds object refs, counts, the largest clusters
and the contaminated rows' decisions.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from evol.config import EvolveConfig
from evol.contamination import (
    WIZARDLM_TESTSET,
    EvalSet,
    NgramIndex,
    build_index,
    contaminated_by,
    read_testset,
)
from evol.dedupe import (
    band_keys,
    components,
    lsh_params,
    signatures,
    similarity,
    sketches,
)
from evol.output import record_files, write_bucket
from evol.records import CONTAMINATED, DUPLICATE, KEPT, SURVIVED, in_training_set
from evol.resume import BUCKET_FILE, bucket_file
from evol.templates import user_turn

READ_COLUMNS = ["id", "round", "instruction", "input", "response", "status", "response_reason",
                "response_truncated"]
MARKS = ["status", "duplicate_of", "contaminated_by"]  # what this stage sets on a record
DECISION_SCHEMA = pa.schema([("bucket", pa.int64()), ("id", pa.string()), ("status", pa.string()),
                             ("duplicate_of", pa.string()), ("contaminated_by", pa.string())])
LARGEST_CLUSTERS = 5
KEYS_PER_PART = 4_000_000  # band keys one part task sorts: ~100 MB with its temporaries
RECORDS_PER_TASK = 50_000  # records one prepare or rewrite task reads: ~100 MB at most


def evaluation_sets(cfg: EvolveConfig) -> list[EvalSet]:
    """The evaluation sets to check against, read on the driver before any work (a wrong path fails
    in a second)."""
    dc = cfg.decontamination
    if not dc.enabled:
        return []
    paths = ([WIZARDLM_TESTSET] if dc.wizardlm_testset else []) + list(dc.paths)
    return [s for i, p in enumerate(paths)
            for s in read_testset(p, dc.text_fields, dc.id_fields, f"decontamination.paths[{i - dc.wizardlm_testset}]")]


def restored(table: pa.Table) -> pa.Table:
    """The records as evolution left them: this stage's own marks undone."""
    survived = pc.fill_null(pc.is_in(table["status"], value_set=pa.array(SURVIVED)), False)
    table = _set(table, "status", pc.if_else(survived, KEPT, table["status"]))
    for name in ("duplicate_of", "contaminated_by"):
        if name in table.column_names:
            table = _set(table, name, pc.if_else(survived, pa.scalar(None, pa.string()), table[name]))
    return table


def _set(table: pa.Table, name: str, column) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def prepare(batch: pa.Table, bucket: int, index: NgramIndex | None, cfg: EvolveConfig) -> pa.Table:
    """One bucket's records (READ_COLUMNS): its training-set rows, each with the test item it copies
    (or null) and, with dedupe on, its LSH band `keys` and `sketch` (`as_column`)."""
    batch = restored(batch)
    flags = batch.select(["status", "response_reason", "response_truncated"]).to_pylist()
    train = [in_training_set(row, cfg.evolve.train_on_truncated_responses) for row in flags]
    rows = batch.filter(pa.array(train, pa.bool_()))
    texts = [user_turn(i, x) for i, x in zip(rows["instruction"].to_pylist(), rows["input"].to_pylist())]
    found = (contaminated_by([[t, r] for t, r in zip(texts, rows["response"].to_pylist())], index) if index
             else [None] * len(texts))
    table = pa.table({"id": rows["id"], "round": pc.cast(rows["round"], pa.int64()),
                      "bucket": pa.array([bucket] * rows.num_rows, pa.int64()),
                      "contaminated_by": pa.array(found, pa.string())})
    d = cfg.dedupe
    if d.enabled:
        sigs = signatures(texts, d.shingle_words, d.num_perm, d.seed)
        table = (table.append_column("keys", as_column(band_keys(sigs, *lsh_params(d.threshold, d.num_perm))))
                 .append_column("sketch", as_column(sketches(sigs))))
    return table


def prepare_files(paths: list[str], index: NgramIndex | None, cfg: EvolveConfig) -> pa.Table:
    """A prepare task: `prepare` of the records of some record files, as one block."""
    return pa.concat_tables([prepare(_parquet(path, columns=READ_COLUMNS), _bucket(path), index, cfg)
                             for path in paths])


def as_column(values: np.ndarray) -> pa.Array:
    """A 2-D numpy array as a fixed-size binary column, one row's values per cell (no copy)."""
    values = np.ascontiguousarray(values)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(values.shape[1] * values.itemsize), len(values),
                                                [None, pa.py_buffer(values)])


def as_matrix(column: pa.Array | pa.ChunkedArray, dtype) -> np.ndarray:
    """`as_column` read back: [rows, width] of dtype (no copy for a column of one chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    width = column.type.byte_width
    shape = (len(column), width // np.dtype(dtype).itemsize)
    if not len(column):
        return np.zeros(shape, dtype)
    data = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * width:(column.offset + len(column)) * width]
    return data.view(dtype).reshape(shape)


def contaminated_decisions(batch: pa.Table) -> pa.Table:
    hit = batch.filter(pc.is_valid(batch["contaminated_by"]))
    return pa.table({"bucket": hit["bucket"], "id": hit["id"], "status": pa.array([CONTAMINATED] * hit.num_rows),
                     "duplicate_of": pa.nulls(hit.num_rows, pa.string()), "contaminated_by": hit["contaminated_by"]},
                    schema=DECISION_SCHEMA)


# --- near-duplicates over the prepared blocks: rows are numbered in block order ---------------------

def _column(blocks: list[pa.Table], name: str) -> pa.ChunkedArray:
    """A column of all blocks: its k-th value is that of row k."""
    return pa.chunked_array([chunk for block in blocks for chunk in block[name].chunks],
                            blocks[0].schema.field(name).type)


def band_pairs(blocks: list[pa.Table], part: int, parts: int) -> np.ndarray:
    """Candidate pairs, int64 [pairs, 2] of row numbers, from the band keys of one part (key mod
    parts): in every key that two or more clean rows hold, each of them with the key's earliest
    (lowest round, then lowest id). Each pair once."""
    keys, rows, total = [], [], 0
    for block in blocks:
        k = as_matrix(block["keys"], np.int64)
        clean = pc.is_null(block["contaminated_by"]).to_numpy(zero_copy_only=False)
        row, band = np.nonzero((k.view(np.uint64) % np.uint64(parts) == part) & clean[:, None])
        keys.append(k[row, band])
        rows.append(row + total)
        total += block.num_rows
    key, row = np.concatenate(keys or [np.zeros(0, np.int64)]), np.concatenate(rows or [np.zeros(0, np.int64)])
    order = np.argsort(key, kind="stable")
    key, row = key[order], row[order]
    same = key[1:] == key[:-1]
    shared = np.r_[same, False] | np.r_[False, same]  # the few rows whose key another row holds too
    if not shared.any():
        return np.zeros((0, 2), np.int64)
    members = pa.table({"key": key[shared], "round": _column(blocks, "round").take(row[shared]),
                        "id": _column(blocks, "id").take(row[shared]), "row": row[shared]})
    members = members.sort_by([("key", "ascending"), ("round", "ascending"), ("id", "ascending")])
    key, row = members["key"].to_numpy(), members["row"].to_numpy()
    starts = np.r_[True, key[1:] != key[:-1]]
    earliest = row[np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))]
    pairs = np.unique(row[~starts] * total + earliest[~starts])
    return np.stack([pairs // total, pairs % total], axis=1)


def similar_pairs(blocks: list[pa.Table], pairs: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate pairs whose sketches reach the threshold (a chance band collision does not)."""
    if not len(pairs):
        return pairs
    sketch = _column(blocks, "sketch")
    first, second = (as_matrix(sketch.take(pairs[:, end]), np.uint8) for end in (0, 1))
    return pairs[similarity(first, second) >= threshold]


def duplicate_decisions(blocks: list[pa.Table], pairs: np.ndarray) -> pa.Table:
    """All confirmed pairs at once: the connected components; every member but the earliest (lowest
    round, then lowest id) becomes a duplicate of it (DECISION_SCHEMA)."""
    rows = np.unique(pairs)
    if not len(rows):
        return DECISION_SCHEMA.empty_table()
    nodes = pa.table({"row": rows, **{name: _column(blocks, name).take(rows) for name in ("round", "id", "bucket")}})
    nodes = nodes.sort_by([("round", "ascending"), ("id", "ascending")])  # node i: the i-th earliest
    rank = np.empty(len(rows), np.int64)
    rank[np.searchsorted(rows, nodes["row"].to_numpy())] = np.arange(len(rows))
    labels = components(len(rows), rank[np.searchsorted(rows, pairs)])
    moved = np.flatnonzero(labels != np.arange(len(rows)))
    return pa.table({"bucket": nodes["bucket"].take(moved), "id": nodes["id"].take(moved),
                     "status": pa.array([DUPLICATE] * len(moved)), "duplicate_of": nodes["id"].take(labels[moved]),
                     "contaminated_by": pa.nulls(len(moved), pa.string())}, schema=DECISION_SCHEMA)


def part_pairs(part: int, parts: int, threshold: float, *blocks: pa.Table) -> np.ndarray:
    """A part task: the confirmed pairs of one part of the key space."""
    return similar_pairs(list(blocks), band_pairs(list(blocks), part, parts), threshold)


def clusters(block_count: int, *blocks_and_pairs) -> tuple[pa.Table, dict]:
    """The cluster task: the duplicate decisions, and what the summary reports of them."""
    blocks, pairs = list(blocks_and_pairs[:block_count]), blocks_and_pairs[block_count:]
    duplicates = duplicate_decisions(blocks, np.concatenate([np.zeros((0, 2), np.int64), *pairs]))
    return duplicates, {"removed": duplicates.num_rows, "largest": largest_clusters(duplicates).to_pylist()}


# --- rewriting the buckets ------------------------------------------------------------------------

def rewrite_bucket(out: str, bucket: int, decisions: pa.Table, train_on_truncated: bool) -> bool:
    """One bucket's records restored and the decisions (DECISION_SCHEMA, any buckets) applied; its
    files written again only if a record changed. Whether they were."""
    before = _parquet(storage.join(out, "records", bucket_file(bucket)))
    mine = decisions.filter(pc.equal(decisions["bucket"], bucket))
    after = restored(before)
    at = pc.index_in(after["id"], value_set=mine["id"].combine_chunks())
    for name in MARKS:
        after = _set(after, name, pc.if_else(pc.is_valid(at), mine[name].take(at), after[name]))
    if after.select(MARKS).equals(before.select(MARKS)):
        return False
    write_bucket(out, bucket, after.to_pylist(), train_on_truncated)  # removes training files left empty
    return True


def _bucket(path: str) -> int:
    return int(BUCKET_FILE.search(path).group(1))


# --- the stage ------------------------------------------------------------------------------------

def curate(ray, cfg: EvolveConfig, records_dir: str, sets: list[EvalSet]) -> dict:
    """Contamination and near-duplicates over every record file, each bucket's files rewritten to
    say them; returns what the summary reports (counts, the largest clusters, the sets checked).
    An output of at most `dedupe.in_process_records` records is done in this process with the same
    functions (starting Ray tasks costs seconds); a larger one on Ray."""
    started, files = time.time(), record_files(records_dir)
    if not sets and not cfg.dedupe.enabled:
        return {"checked_rows": 0, "rewritten_buckets": 0, "decontamination": contamination_stats(cfg, [], []),
                "dedupe": {"enabled": False}, "seconds": 0.0}
    index = build_index(sets, cfg.decontamination.ngram) if sets else None
    records = sum(_parquet(f, pq.read_metadata).num_rows for f in files)
    small = records <= cfg.dedupe.in_process_records
    checked, contaminated, duplicates, rewritten = _run(_Here() if small else _OnRay(ray), cfg, files, records, index)
    result = {"checked_rows": checked, "rewritten_buckets": rewritten, "in_process": small,
              "decontamination": contamination_stats(cfg, sets, contaminated),
              "dedupe": dedupe_stats(cfg, duplicates), "seconds": round(time.time() - started, 2)}
    print(f"[evolve] finish stage: {result['checked_rows']} training rows checked, "
          f"{result['decontamination']['contaminated']} contaminated, {result['dedupe'].get('removed', 0)} "
          f"near-duplicates, {rewritten} bucket(s) rewritten in {result['seconds']:.0f} s", flush=True)
    return result


def _parquet(path: str, read=pq.read_table, **kwargs):
    """A parquet file (or its metadata), local or s3://."""
    filesys, inner = storage.filesystem(path)
    return read(inner, filesystem=filesys, **kwargs)


class _Here:
    """Runs the stage's tasks in this process, one after the other (a small output)."""

    cpus = 1

    def call(self, fn, *args, returns: int = 1):
        return fn(*args)

    def get(self, value):
        return value

    def put(self, value):
        return value


class _OnRay:
    """Runs them as Ray tasks: the blocks stay in the object store, the driver holds refs."""

    def __init__(self, ray):
        self.ray, self.cpus, self.remote = ray, max(1, int(ray.cluster_resources().get("CPU", 1))), {}

    def call(self, fn, *args, returns: int = 1):
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(fn)
        return self.remote[fn].options(num_returns=returns).remote(*args)

    def get(self, value):
        return self.ray.get(value)

    def put(self, value):
        return self.ray.put(value)


def _run(tasks, cfg: EvolveConfig, files: list[str], records: int, index: NgramIndex | None) -> tuple:
    """(rows checked, contaminated rows, the duplicates' stats, buckets rewritten): the stage's tasks,
    the same functions whichever runs them."""
    groups = _groups(files, records, tasks.cpus)
    index, cfg_ref = tasks.put(index), tasks.put(cfg)
    blocks = [tasks.call(prepare_files, group, index, cfg_ref) for group in groups]
    duplicates, stats = [], None
    if cfg.dedupe.enabled:
        parts = _parts(records, cfg, tasks.cpus)
        pairs = [tasks.call(part_pairs, part, parts, cfg.dedupe.threshold, *blocks) for part in range(parts)]
        found, stats = tasks.call(clusters, len(blocks), *blocks, *pairs, returns=2)
        duplicates, stats = [found], tasks.get(stats)
        kept = [row["kept"] for row in stats["largest"]]  # found in a task: it reads the id of every record
        stats["texts"] = tasks.get(tasks.call(_instructions, files, kept))
    decided, checked = tasks.call(decide, len(blocks), *blocks, *duplicates, returns=2)
    rewritten = tasks.get([tasks.call(rewrite_buckets, cfg.output.path, [_bucket(f) for f in group], decided,
                                      cfg.evolve.train_on_truncated_responses) for group in groups])
    checked, contaminated = tasks.get(checked)
    return checked, [contaminated], stats, sum(rewritten)


def _groups(files: list[str], records: int, cpus: int) -> list[list[str]]:
    """Record files per prepare and rewrite task: four tasks per CPU at least, some 50K records each."""
    count = max(1, min(len(files), max(4 * cpus, -(-records // RECORDS_PER_TASK))))
    return [list(group) for group in np.array_split(np.array(files, dtype=object), count) if len(group)]


def decide(block_count: int, *blocks_and_duplicates: pa.Table) -> tuple[pa.Table, tuple[int, pa.Table]]:
    """Every decision (DECISION_SCHEMA), and (rows checked, the contaminated rows' decisions)."""
    blocks, duplicates = blocks_and_duplicates[:block_count], blocks_and_duplicates[block_count:]
    contaminated = pa.concat_tables([DECISION_SCHEMA.empty_table(), *map(contaminated_decisions, blocks)])
    return pa.concat_tables([contaminated, *duplicates]), (sum(block.num_rows for block in blocks), contaminated)


def rewrite_buckets(out: str, buckets: list[int], decisions: pa.Table, train_on_truncated: bool) -> int:
    """A rewrite task: `rewrite_bucket` of each; how many were rewritten."""
    return sum(rewrite_bucket(out, bucket, decisions, train_on_truncated) for bucket in buckets)


def _parts(records: int, cfg: EvolveConfig, cpus: int) -> int:
    """Part tasks: one per CPU at least, and at most about KEYS_PER_PART band keys each."""
    bands, _ = lsh_params(cfg.dedupe.threshold, cfg.dedupe.num_perm)
    return max(cpus, -(-records * bands // KEYS_PER_PART))


def contamination_stats(cfg: EvolveConfig, sets: list[EvalSet], batches) -> dict:
    """Rows marked per test set and the distinct test items they copy, counted as the contaminated
    rows stream by (driver memory: the test items hit, never the rows)."""
    rows, items = {s.name: 0 for s in sets}, {s.name: set() for s in sets}
    for batch in batches:
        for label in batch["contaminated_by"].to_pylist():
            name = label.split(":", 1)[0]
            rows[name] += 1
            items[name].add(label)
    return {"enabled": cfg.decontamination.enabled, "ngram": cfg.decontamination.ngram,
            "sets": [{"name": s.name, "path": s.path, "sha256": s.sha256, "items": len(s.items)} for s in sets],
            "contaminated": sum(rows.values()), "contaminated_by_set": rows,
            "items_hit_by_set": {name: len(hit) for name, hit in items.items()}}


def largest_clusters(batch: pa.Table) -> pa.Table:
    """Over every duplicate row (one block): the LARGEST_CLUSTERS biggest clusters and how many there are."""
    sizes = batch.group_by("duplicate_of").aggregate([([], "count_all")]).sort_by([("count_all", "descending"),
                                                                                    ("duplicate_of", "ascending")])
    top = sizes.slice(0, LARGEST_CLUSTERS)
    return pa.table({"kept": top["duplicate_of"], "size": pc.add(top["count_all"], 1),
                     "clusters": pa.array([sizes.num_rows] * top.num_rows, pa.int64())})


def dedupe_stats(cfg: EvolveConfig, duplicates: dict | None) -> dict:
    """`duplicates`: `clusters`' stats (rows marked, `largest_clusters` rows) and the `texts` of the
    clusters' kept rows, or None when dedupe is off."""
    d = cfg.dedupe
    if duplicates is None:
        return {"enabled": False}
    removed, largest, texts = duplicates["removed"], duplicates["largest"], duplicates["texts"]
    bands, rows = lsh_params(d.threshold, d.num_perm)
    return {"enabled": True, "threshold": d.threshold, "shingle_words": d.shingle_words, "num_perm": d.num_perm,
            "bands": bands, "rows_per_band": rows, "removed": removed,
            "clusters": largest[0]["clusters"] if largest else 0,
            "largest": [{"kept": row["kept"], "size": row["size"], **texts.get(row["kept"], {})} for row in largest]}


def _instructions(files: list[str], ids: list[str]) -> dict[str, dict]:
    """Round and (the start of) the instruction of a few records, read with a filter on id."""
    if not ids:
        return {}
    import pyarrow.dataset as pads

    filesys, _ = storage.filesystem(files[0])
    table = pads.dataset([storage.filesystem(f)[1] for f in files], filesystem=filesys, format="parquet").to_table(
        columns=["id", "round", "instruction"], filter=pads.field("id").isin(ids))
    return {row["id"]: {"round": row["round"], "instruction": (row["instruction"] or "")[:160]}
            for row in table.to_pylist()}
