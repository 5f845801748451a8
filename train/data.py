"""Driver-side data preparation on Ray Data: read parquet -> tokenise+mask -> split -> units -> ranks.

Required input columns (the evolve job's training parquet): `id` and either `messages`
(list of {role, content}) or `instruction` / `input` / `response`; `root_id` (the seed of the
row's lineage) when present. Produced training units (what `optim.batch_unit` counts):
samples (`key`, `input_ids`, `labels`, `n_real`) or packed rows of data.max_length (+
`position_ids`, `n_samples`), handed to the workers as one dataset per rank.

Everything is a function of the data and the seed, never of Ray's scheduling order: the
held-out split hashes `root_id` (a seed and all its evolutions fall on the same side: none of
a held-out instruction's siblings is trained on), packing groups hash the row id, and the
rank datasets take the units in key order. A rerun of the same name thus trains on the same
units, and the fingerprint stored in checkpoints tells whether it does.
Rows that cannot be used are counted by reason, never raised.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from common import storage
from common.config import UserError
from common.tokenizer import load_tokenizer
from train.config import TrainConfig
from train.masking import hf_encoder, tokenize_rows
from train.packing import pack_group, stable_hash, unit_interval

INPUT_COLUMNS = ("id", "root_id", "messages", "instruction", "input", "response")


def is_heldout(row_id: str, root_id: str | None, seed: int, fraction: float) -> bool:
    """Whole lineages are held out: the key is the row's root_id (its own id for a seed row)."""
    return unit_interval(seed, "heldout", root_id or row_id) < fraction


def row_digest(row_id: str, input_ids: list[int], labels: list[int]) -> int:
    """Content hash of one tokenised row (summed into the dataset fingerprint)."""
    data = np.asarray(input_ids, dtype=np.int64).tobytes() + b"|" + np.asarray(labels, dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.sha1(row_id.encode() + b"|" + data).digest()[:8], "big", signed=True)


class Tokenize:
    """Ray Data callable class: loads the tokenizer once per actor, maps batches of rows.

    Adds to `train.masking.tokenize_rows`' columns: heldout, key (order), digest (content)."""

    def __init__(self, model_name: str, template: str, max_length: int, policy: str, seed: int,
                 heldout_fraction: float):
        # Tokenizer files only, read here on the actor's node (the driver's cache may not exist here).
        self.encoder = hf_encoder(load_tokenizer(model_name))
        self.args = (template, max_length, policy)
        self.seed, self.fraction = seed, heldout_fraction

    def __call__(self, batch):
        rows = batch.to_pylist()
        out = tokenize_rows(rows, self.args[0], self.encoder, *self.args[1:])
        out["heldout"] = [is_heldout(i, r.get("root_id"), self.seed, self.fraction) for i, r in zip(out["id"], rows)]
        out["key"] = [stable_hash(self.seed, "order", i) for i in out["id"]]
        out["digest"] = [row_digest(*x) for x in zip(out["id"], out["input_ids"], out["labels"])]
        return out


@dataclass
class Scan:
    rows_read: int
    counts: dict  # status -> rows ("ok" + one key per drop reason)
    truncated: int
    heldout_rows: int  # usable rows held out (all of them, evaluated or not)
    train_rows: int  # training rows used (at most data.max_samples)
    digest: int  # sum of the used training rows' digests mod 2**64
    available_rows: int = 0  # usable training rows before data.max_samples
    key_limit: int | None = None  # data.max_samples: the largest order key of a used row


class Smallest:
    """The `size` smallest (key, digest) pairs of a stream: memory bounded by `size`, not by the data."""

    def __init__(self, size: int | None):
        self.size, self.heap = size, []

    def add(self, key: int, digest: int) -> None:
        if self.size is None:
            return
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (-key, digest))
        elif -self.heap[0][0] > key:
            heapq.heapreplace(self.heap, (-key, digest))


SCAN_COLUMNS = ["status", "truncated", "heldout", "digest", "key"]


def scan(tokenized, max_samples: int | None = None) -> Scan:
    """One streaming pass over the small columns of the tokenised dataset."""
    batches = tokenized.select_columns(SCAN_COLUMNS).iter_batches(batch_size=8192, batch_format="pyarrow")
    return scan_batches(batches, max_samples)


def scan_batches(batches, max_samples: int | None = None) -> Scan:
    """Counts of pyarrow batches of SCAN_COLUMNS. With `max_samples`, the used training rows are the
    `max_samples` with the smallest order keys (a hash of data.seed and the row id): a uniform sample
    of the rows, whatever their lineage, the same on every rerun."""
    counts: Counter = Counter()
    truncated = heldout = digest = 0
    sample = Smallest(max_samples)
    for batch in batches:
        status, held = batch.column("status").to_pylist(), batch.column("heldout").to_pylist()
        counts.update(status)
        truncated += sum(batch.column("truncated").to_pylist())
        for s, h, d, k in zip(status, held, batch.column("digest").to_pylist(), batch.column("key").to_pylist()):
            if s == "ok":
                heldout += h
                if not h:
                    digest = (digest + d) % 2**64
                    sample.add(k, d)
    available = counts.get("ok", 0) - heldout
    scanned = Scan(sum(counts.values()), dict(counts), truncated, heldout, available, digest, available)
    if max_samples is not None and available > max_samples:
        scanned.train_rows = max_samples
        scanned.digest = sum(d for _, d in sample.heap) % 2**64
        scanned.key_limit = -sample.heap[0][0]
    return scanned


def fingerprint(digest: int, train_rows: int, cfg: TrainConfig) -> str:
    """What a resumed run must train on: the training rows' content and the settings that shape units."""
    d = cfg.data
    shape = {"digest": digest, "rows": train_rows, "max_length": d.max_length, "packing": d.packing,
             "batch_unit": cfg.optim.batch_unit, "pack_group_rows": d.pack_group_rows, "seed": d.seed}
    return hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def add_pack_group(batch: dict, seed: int, groups: int) -> dict:
    batch["group"] = np.array([int(unit_interval(seed, "group", k) * groups) for k in batch["key"]], dtype=np.int64)
    return batch


def pack_one_group(batch: dict, max_length: int, pad_id: int) -> dict:
    return pack_group(list(batch["input_ids"]), list(batch["labels"]), [int(k) for k in batch["key"]],
                      max_length, pad_id)


def to_units(train, cfg: TrainConfig, train_rows: int, pad_id: int):
    """Samples, or (batch_unit=sequences) rows packed per hash group of ~pack_group_rows samples."""
    d = cfg.data
    train = train.select_columns(["key", "input_ids", "labels", "n_tokens"])
    if cfg.optim.batch_unit == "samples":
        return train.rename_columns({"n_tokens": "n_real"})
    groups = max(1, math.ceil(train_rows / d.pack_group_rows))
    grouped = train.map_batches(add_pack_group, batch_format="numpy", fn_kwargs={"seed": d.seed, "groups": groups})
    return grouped.groupby("group").map_groups(pack_one_group, batch_format="numpy",
                                               fn_kwargs={"max_length": d.max_length, "pad_id": pad_id})


@dataclass
class Prepared:
    units: object  # ray.data.Dataset of training units (materialized)
    heldout: list[dict]  # evaluated held-out rows (id, input_ids, labels), at most data.heldout_max_rows
    scan: Scan
    n_units: int
    real_tokens: int
    fingerprint: str


def check_input(path: str) -> None:
    if not storage.exists(path):
        raise UserError(f"training data not found: {path} (run the evolve job first, or set data.path)")


def read_input(path: str):
    import ray

    try:
        ds = ray.data.read_parquet(path)
        columns = set(ds.schema().names)
    except Exception as exc:
        raise UserError(f"cannot read training data {path}: {str(exc).splitlines()[0]}") from None
    if "id" not in columns or not ({"messages"} <= columns or {"instruction", "response"} <= columns):
        raise UserError(f"{path}: needs columns id and messages (or instruction, response); found {sorted(columns)}")
    return ds.select_columns([c for c in INPUT_COLUMNS if c in columns])


def prepare(cfg: TrainConfig, pad_id: int) -> Prepared:
    import ray
    from ray.data.expressions import col

    d = cfg.data
    tokenized = read_input(d.path).map_batches(
        Tokenize, batch_format="pyarrow", batch_size=256, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
        fn_constructor_args=(cfg.model.name, d.template, d.max_length, d.truncation, d.seed,
                             d.heldout_fraction)).materialize()
    counted = scan(tokenized, d.max_samples)
    if counted.rows_read == 0:
        raise UserError(f"training data {d.path} is empty")
    if counted.train_rows == 0:
        raise UserError(f"no usable training rows in {d.path}: {counted.counts}, held out {counted.heldout_rows}")
    usable = tokenized.filter(expr=col("status") == "ok")
    heldout = []
    if counted.heldout_rows and d.heldout_max_rows:
        heldout = usable.filter(expr=col("heldout") == True)  # noqa: E712 (builds an expression)
        heldout = heldout.select_columns(["key", "id", "input_ids", "labels"]).sort("key").take(d.heldout_max_rows)
    train = usable.filter(expr=col("heldout") == False)  # noqa: E712
    if counted.key_limit is not None:
        train = train.filter(expr=col("key") <= counted.key_limit)
    units = to_units(train, cfg, counted.train_rows, pad_id).materialize()
    n_units = units.count()
    return Prepared(units=units, heldout=heldout, scan=counted, n_units=n_units,
                    real_tokens=int(units.sum("n_real") or 0),
                    fingerprint=fingerprint(counted.digest, counted.train_rows, cfg))


def rank_datasets(units, used: int, world_size: int) -> dict:
    """The first `used` units in key order, split into one dataset per rank (equal sizes)."""
    ordered = units.sort("key").limit(used)
    return {f"rank{r}": part for r, part in enumerate(ordered.split(world_size, equal=True))}
