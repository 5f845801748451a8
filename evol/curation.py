"""The evolve job's finish stage: benchmark contamination, then near-duplicates, over every record
written (all seeds, all rounds), as Ray Data stages; then each bucket's files rewritten to agree.

It runs after the last bucket is written and reads only the records. The rows it checks are the
training set's (`records.in_training_set`). Contamination comes first: a contaminated row is out,
and the near-duplicates of the rest keep one clean row per cluster.

    records -> prepare (restore, contamination, MinHash)     -> contaminated rows
            -> one row per (record, LSH band) -> group by band key -> proposed pairs
            -> joined with both rows' sketches -> pairs at or above the threshold
            -> one task: clusters (numpy) -> duplicate rows (duplicate_of: the cluster's earliest)
    every bucket + its decisions -> records, training parquet and jsonl rewritten where they change

Idempotent: the statuses it set before are undone first (to it a duplicate or contaminated record
is a kept one), so a rerun recomputes the same decisions and rewrites no bucket that already says
them. A bucket is rewritten as it was first written, training files first and its record file
last, so a kill leaves a bucket old or (for the training files) new, and the rerun finishes it.
Driver memory does not grow with the records: only counts and the largest clusters come back.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from evol.config import EvolveConfig
from evol.contamination import WIZARDLM_TESTSET, NgramIndex, EvalSet, build_index, contaminated_by, read_testset
from evol.dedupe import band_keys, components, lsh_params, signatures, similarity, sketches
from evol.output import record_files, write_bucket
from evol.records import CONTAMINATED, DUPLICATE, KEPT, SURVIVED, in_training_set
from evol.resume import BUCKET_FILE, bucket_file
from evol.templates import user_turn

READ_COLUMNS = ["id", "round", "instruction", "input", "response", "status", "response_reason",
                "response_truncated"]
DECISION_SCHEMA = pa.schema([("bucket", pa.int64()), ("id", pa.string()), ("status", pa.string()),
                             ("duplicate_of", pa.string()), ("contaminated_by", pa.string())])
PAIR_COLUMNS = ["a", "a_round", "a_bucket", "b", "b_round", "b_bucket"]
_PAIR_TYPES = {"a": pa.string(), "b": pa.string(), "a_round": pa.int64(), "b_round": pa.int64(),
               "a_bucket": pa.int64(), "b_bucket": pa.int64(), "sketch_a": pa.binary()}
LARGEST_CLUSTERS = 5


def evaluation_sets(cfg: EvolveConfig) -> list[EvalSet]:
    """The evaluation sets to check against, read on the driver before any work (a wrong path fails
    in a second)."""
    dc = cfg.decontamination
    if not dc.enabled:
        return []
    paths = ([WIZARDLM_TESTSET] if dc.wizardlm_testset else []) + list(dc.paths)
    return [s for i, p in enumerate(paths)
            for s in read_testset(p, dc.text_fields, dc.id_fields, f"decontamination.paths[{i - dc.wizardlm_testset}]")]


def restored(row: dict) -> dict:
    """The record as evolution left it: this stage's own marks undone."""
    if row["status"] in SURVIVED:
        return dict(row, status=KEPT, duplicate_of=None, contaminated_by=None)
    return row


def prepare(batch: pa.Table, index: NgramIndex | None, cfg: EvolveConfig) -> pa.Table:
    """Ray Data UDF over READ_COLUMNS + `path`: the training-set rows, each with its bucket, the test
    item it copies (or null) and, when clean, its LSH band keys and sketch."""
    rows = [restored(r) for r in batch.to_pylist()]
    rows = [r for r in rows if in_training_set(r, cfg.evolve.train_on_truncated_responses)]
    texts = [user_turn(r["instruction"], r["input"]) for r in rows]
    found = contaminated_by([[t, r["response"]] for t, r in zip(texts, rows)], index) if index else [None] * len(rows)
    d = cfg.dedupe
    sigs = signatures(texts, d.shingle_words, d.num_perm, d.seed) if rows else np.zeros((0, d.num_perm), np.uint32)
    keys, sks = band_keys(sigs, *lsh_params(d.threshold, d.num_perm)), sketches(sigs)
    return pa.table({
        "id": [r["id"] for r in rows], "round": pa.array([r["round"] for r in rows], pa.int64()),
        "bucket": pa.array([int(BUCKET_FILE.search(r["path"]).group(1)) for r in rows], pa.int64()),
        "contaminated_by": pa.array(found, pa.string()),
        "keys": pa.array([None if c else list(k) for c, k in zip(found, keys)], pa.list_(pa.int64())),
        "sketch": pa.array([None if c else s for c, s in zip(found, sks)], pa.binary())})


def contaminated_decisions(batch: pa.Table) -> pa.Table:
    hit = batch.filter(pc.is_valid(batch["contaminated_by"]))
    return pa.table({"bucket": hit["bucket"], "id": hit["id"], "status": pa.array([CONTAMINATED] * hit.num_rows),
                     "duplicate_of": pa.nulls(hit.num_rows, pa.string()), "contaminated_by": hit["contaminated_by"]},
                    schema=DECISION_SCHEMA)


def band_rows(batch: pa.Table, parts: int) -> pa.Table:
    """One row per (clean record, band): key, id, round, bucket, and `part` (key mod parts): a part
    is handled by one call, so every row of a key meets in it."""
    clean = batch.filter(pc.is_valid(batch["keys"]))
    take = np.repeat(np.arange(clean.num_rows), pc.list_value_length(clean["keys"]).to_numpy())
    keys = pc.list_flatten(clean["keys"])
    return pa.table({"part": pa.array(keys.to_numpy() % parts, pa.int64()), "key": keys, "id": clean["id"].take(take),
                     "round": clean["round"].take(take), "bucket": clean["bucket"].take(take)})


def propose_pairs(part: pa.Table) -> pa.Table:
    """Ray Data map_groups UDF over one part of the band rows: within every key, each member paired
    with the key's earliest (lowest round, then id): PAIR_COLUMNS, a the member, b the earliest."""
    rows = part.sort_by([("key", "ascending"), ("round", "ascending"), ("id", "ascending")])
    key = rows["key"].to_numpy()
    starts = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))
    a, b = np.flatnonzero(~starts), first[~starts]
    return pa.table({"a": rows["id"].take(a), "a_round": rows["round"].take(a), "a_bucket": rows["bucket"].take(a),
                     "b": rows["id"].take(b), "b_round": rows["round"].take(b), "b_bucket": rows["bucket"].take(b)})


def with_sketch(batch: pa.Table, end: str, parts: int) -> pa.Table:
    """Pair rows (end "a" or "b") and sketch rows (the clean records) in one schema, keyed by the
    record id `k`, with `part` = the record's bucket mod parts: a record's sketch and the pairs
    that name it meet in one call of `attach_sketch`."""
    if "a" in batch.column_names:  # pairs
        k, bucket, sketch = batch[end], batch[f"{end}_bucket"], pa.nulls(batch.num_rows, pa.binary())
        pairs = batch.select(PAIR_COLUMNS + ([] if end == "a" else ["sketch_a"]))
    else:  # the clean records
        clean = batch.filter(pc.is_valid(batch["keys"]))
        k, bucket, sketch = clean["id"], clean["bucket"], clean["sketch"]
        pairs = pa.table({name: pa.nulls(clean.num_rows, _PAIR_TYPES[name]) for name in
                          PAIR_COLUMNS + ([] if end == "a" else ["sketch_a"])})
    part = pa.array(bucket.to_numpy(zero_copy_only=False) % parts, pa.int64())
    return pairs.append_column("part", part).append_column("k", k).append_column("sketch", sketch)


def attach_sketch(part: pa.Table, end: str) -> pa.Table:
    """Ray Data map_groups UDF: every pair row of the part with the sketch of its record `end`."""
    kind = pc.cast(pc.is_valid(part["a"]), pa.int8())  # 0: a record's sketch row, first in its run; 1: a pair
    rows = part.append_column("kind", kind).sort_by([("k", "ascending"), ("kind", "ascending")])
    k = rows["k"].to_numpy(zero_copy_only=False)
    starts = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(k)), 0))
    is_pair = rows["kind"].to_numpy() == 1
    pairs = rows.filter(pa.array(is_pair))
    sketch = rows["sketch"].take(first[is_pair])
    return pairs.drop_columns(["part", "k", "sketch", "kind"]).append_column(f"sketch_{end}", sketch)


def similar_pairs(batch: pa.Table, threshold: float) -> pa.Table:
    """The proposed pairs whose sketches say they reach the threshold (a chance band collision does not)."""
    keep = [similarity(x, y) >= threshold for x, y in zip(batch["sketch_a"].to_pylist(), batch["sketch_b"].to_pylist())]
    return batch.select(PAIR_COLUMNS).filter(pa.array(keep, pa.bool_()))


def resolve_clusters(batch: pa.Table) -> pa.Table:
    """All confirmed pairs at once (one task): the connected components; every member but the
    earliest (lowest round, then lowest id) becomes a duplicate of it."""
    nodes = pa.table({"id": pa.concat_arrays([batch["a"].combine_chunks(), batch["b"].combine_chunks()]),
                      "round": pa.concat_arrays([batch["a_round"].combine_chunks(), batch["b_round"].combine_chunks()]),
                      "bucket": pa.concat_arrays([batch["a_bucket"].combine_chunks(),
                                                  batch["b_bucket"].combine_chunks()])})
    nodes = nodes.group_by(["round", "id", "bucket"]).aggregate([]).sort_by([("round", "ascending"),
                                                                             ("id", "ascending")])
    ids = nodes["id"]
    edges = np.stack([pc.index_in(batch[end], value_set=ids).to_numpy(zero_copy_only=False) for end in "ab"], axis=1)
    labels = components(nodes.num_rows, edges)
    moved = np.flatnonzero(labels != np.arange(nodes.num_rows))
    return pa.table({"bucket": nodes["bucket"].take(moved), "id": nodes["id"].take(moved),
                     "status": pa.array([DUPLICATE] * len(moved)),
                     "duplicate_of": nodes["id"].take(labels[moved]), "contaminated_by": pa.nulls(len(moved), pa.string())},
                    schema=DECISION_SCHEMA)


def rewrite_bucket(group: pa.Table, out: str, train_on_truncated: bool) -> pa.Table:
    """Ray Data map_groups UDF over one bucket's decisions (DECISION_SCHEMA; a row with a null id
    only names the bucket): its records restored, the decisions applied, and its files written
    again only where a record changed."""
    bucket = group["bucket"][0].as_py()
    decided = {row["id"]: row for row in group.to_pylist() if row["id"] is not None}
    path = storage.join(out, "records", bucket_file(bucket))
    filesys, inner = storage.filesystem(path)
    before = pq.read_table(inner, filesystem=filesys).to_pylist()
    after = [_decide(restored(row), decided.get(row["id"])) for row in before]
    changed = any(_marks(x) != _marks(y) for x, y in zip(before, after))
    if changed:
        if not any(in_training_set(row, train_on_truncated) for row in after):
            _drop_training_files(out, bucket)  # write_bucket writes none for an empty training set
        write_bucket(out, bucket, after, train_on_truncated)
    return pa.table({"bucket": [bucket], "rewritten": [changed]})


def _decide(row: dict, decision: dict | None) -> dict:
    if decision is None:
        return row
    return dict(row, status=decision["status"], duplicate_of=decision["duplicate_of"],
                contaminated_by=decision["contaminated_by"])


def _marks(row: dict) -> tuple:
    return row["status"], row.get("duplicate_of"), row.get("contaminated_by")


def _drop_training_files(out: str, bucket: int) -> None:
    name = bucket_file(bucket)
    for path in (storage.join(out, "training", "parquet", name),
                 storage.join(out, "training", "jsonl", name.replace(".parquet", ".jsonl"))):
        if storage.exists(path):
            filesys, inner = storage.filesystem(path)
            filesys.delete_file(inner)


# --- the stage ------------------------------------------------------------------------------------

def curate(ray, cfg: EvolveConfig, records_dir: str, sets: list[EvalSet]) -> dict:
    """Contamination and near-duplicates over every record file, each bucket's files rewritten to
    say them; returns what the summary reports (counts, the largest clusters, the sets checked).
    An output of at most `dedupe.in_process_records` records is done in this process with the same
    functions (a Ray Data shuffle costs seconds even for ten rows); a larger one on Ray."""
    started, files = time.time(), record_files(records_dir)
    if not sets and not cfg.dedupe.enabled:
        return {"checked_rows": 0, "rewritten_buckets": 0, "decontamination": contamination_stats(cfg, [], []),
                "dedupe": {"enabled": False}, "seconds": 0.0}
    index = build_index(sets, cfg.decontamination.ngram) if sets else None
    small = sum(_parquet(f, pq.read_metadata).num_rows for f in files) <= cfg.dedupe.in_process_records
    checked, contaminated, duplicates, rewritten = (_in_process if small else _on_ray)(ray, cfg, files, index)
    result = {"checked_rows": checked, "rewritten_buckets": rewritten, "in_process": small,
              "decontamination": contamination_stats(cfg, sets, contaminated),
              "dedupe": dedupe_stats(cfg, duplicates, files), "seconds": round(time.time() - started, 2)}
    print(f"[evolve] finish stage: {result['checked_rows']} training rows checked, "
          f"{result['decontamination']['contaminated']} contaminated, {result['dedupe'].get('removed', 0)} "
          f"near-duplicates, {rewritten} bucket(s) rewritten in {result['seconds']:.0f} s", flush=True)
    return result


def _parquet(path: str, read=pq.read_table, **kwargs):
    """A parquet file (or its metadata), local or s3://."""
    filesys, inner = storage.filesystem(path)
    return read(inner, filesystem=filesys, **kwargs)


def _on_ray(ray, cfg: EvolveConfig, files: list[str], index: NgramIndex | None) -> tuple:
    """(rows checked, contaminated rows, duplicate rows, buckets rewritten) with Ray Data stages."""
    context = ray.data.DataContext.get_current()
    errored, context.max_errored_blocks = context.max_errored_blocks, 0  # the evolve stage tolerates some
    try:
        prepared = (ray.data.read_parquet(files, columns=READ_COLUMNS, include_paths=True)
                    .map_batches(prepare, fn_kwargs={"index": index, "cfg": cfg}, batch_format="pyarrow")
                    .materialize())
        contaminated = prepared.map_batches(contaminated_decisions, batch_format="pyarrow").materialize()
        duplicates = find_duplicates(prepared, cfg, _parts(prepared.count(), cfg)) if cfg.dedupe.enabled else None
        rewritten = rewrite(ray, cfg, files, [d for d in (contaminated, duplicates) if d is not None and d.count()])
    finally:
        context.max_errored_blocks = errored
    largest = (duplicates.map_batches(largest_clusters, batch_size=None, batch_format="pyarrow").take_all()
               if duplicates is not None else None)
    return prepared.count(), contaminated.iter_batches(batch_format="pyarrow", batch_size=65536), (
        None if duplicates is None else (duplicates.count(), largest)), rewritten


def _in_process(ray, cfg: EvolveConfig, files: list[str], index: NgramIndex | None) -> tuple:
    """The same, the same functions, on pyarrow tables in this process (a small output)."""
    tables = [_parquet(f, columns=READ_COLUMNS) for f in files]
    prepared = pa.concat_tables([prepare(t.append_column("path", pa.array([f] * t.num_rows)), index, cfg)
                                 for t, f in zip(tables, files)])
    contaminated = contaminated_decisions(prepared)
    duplicates = None
    if cfg.dedupe.enabled:
        proposed = propose_pairs(band_rows(prepared, 1))
        for end in ("a", "b"):
            proposed = attach_sketch(pa.concat_tables([with_sketch(proposed, end, 1), with_sketch(prepared, end, 1)]),
                                     end)
        duplicates = resolve_clusters(similar_pairs(proposed, cfg.dedupe.threshold))
    decided = pa.concat_tables([contaminated] + ([duplicates] if duplicates is not None else []))
    rewritten = 0
    for f in files:
        bucket = int(BUCKET_FILE.search(f).group(1))
        mine = decided.filter(pc.equal(decided["bucket"], bucket))
        name = pa.table({"bucket": [bucket], "id": [None], "status": [None], "duplicate_of": [None],
                         "contaminated_by": [None]}, schema=DECISION_SCHEMA)
        rewritten += rewrite_bucket(pa.concat_tables([name, mine]), cfg.output.path,
                                    cfg.evolve.train_on_truncated_responses)["rewritten"][0].as_py()
    return prepared.num_rows, [contaminated], (
        None if duplicates is None else (duplicates.num_rows, largest_clusters(duplicates).to_pylist())), rewritten


def _partitions(files: list[str]) -> int:
    """Blocks of the shuffle by bucket: about eight buckets each."""
    return max(1, min(64, len(files) // 8))


def _parts(rows: int, cfg: EvolveConfig) -> int:
    """Parts of the band-key and pair shuffles: about 400K band rows (some 20 MB) per call."""
    bands, _ = lsh_params(cfg.dedupe.threshold, cfg.dedupe.num_perm)
    return max(1, min(256, rows * bands // 400_000))


def find_duplicates(prepared, cfg: EvolveConfig, parts: int):
    """DECISION_SCHEMA rows of every near-duplicate (a Ray dataset, materialised). Each shuffle is a
    group-by on a coarse `part` column, so one call handles a whole part with numpy."""
    proposed = (prepared.map_batches(band_rows, fn_kwargs={"parts": parts}, batch_format="pyarrow")
                .groupby("part", num_partitions=parts).map_groups(propose_pairs, batch_format="pyarrow"))
    for end in ("a", "b"):
        both = proposed.union(prepared).map_batches(with_sketch, fn_kwargs={"end": end, "parts": parts},
                                                     batch_size=None, batch_format="pyarrow")  # a block: one schema
        proposed = both.groupby("part", num_partitions=parts).map_groups(attach_sketch, fn_kwargs={"end": end},
                                                                          batch_format="pyarrow")
    confirmed = proposed.map_batches(similar_pairs, fn_kwargs={"threshold": cfg.dedupe.threshold},
                                     batch_format="pyarrow")
    everything = confirmed.repartition(1)  # one task sees every confirmed pair
    return everything.map_batches(resolve_clusters, batch_size=None, batch_format="pyarrow").materialize()


def rewrite(ray, cfg: EvolveConfig, files: list[str], decisions: list) -> int:
    """Every bucket with its decisions through `rewrite_bucket`; the number of buckets rewritten."""
    buckets = sorted(int(BUCKET_FILE.search(f).group(1)) for f in files)
    nulls = pa.nulls(len(buckets), pa.string())
    names = ray.data.from_arrow(pa.table({"bucket": pa.array(buckets, pa.int64()), "id": nulls, "status": nulls,
                                          "duplicate_of": nulls, "contaminated_by": nulls}, schema=DECISION_SCHEMA))
    plan = names.union(*decisions) if decisions else names
    done = plan.groupby("bucket", num_partitions=_partitions(files)).map_groups(
        rewrite_bucket, fn_kwargs={"out": cfg.output.path, "train_on_truncated": cfg.evolve.train_on_truncated_responses},
        batch_format="pyarrow")
    return sum(row["rewritten"] for row in done.iter_rows())


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


def dedupe_stats(cfg: EvolveConfig, duplicates: tuple[int, list[dict]] | None, files: list[str]) -> dict:
    """`duplicates`: (rows marked, `largest_clusters` rows), or None when dedupe is off."""
    d = cfg.dedupe
    if duplicates is None:
        return {"enabled": False}
    removed, largest = duplicates
    bands, rows = lsh_params(d.threshold, d.num_perm)
    texts = _instructions(files, [row["kept"] for row in largest])
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
