"""Driver-side data preparation on Ray Data: read parquet -> tokenise+mask -> split -> pack.

Required input columns (the evolve job's training parquet): `id` and either `messages`
(list of {role, content}) or `instruction` / `input` / `response`. Produced training rows:
`input_ids`, `labels`, `position_ids` (packed, each of data.max_length) or `input_ids`,
`labels` (unpacked, variable length), plus `n_real` (non-padding tokens).
Rows that cannot be used are counted by reason, never raised.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from common.config import UserError
from train.config import TrainConfig

INPUT_COLUMNS = ("id", "messages", "instruction", "input", "response")


def heldout_key(row_id: str, seed: int) -> float:
    """Stable uniform number in [0, 1) per row: the held-out split does not depend on order."""
    digest = hashlib.sha1(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Tokenize:
    """Ray Data callable class: loads the tokenizer once per actor, maps batches of rows."""

    def __init__(self, model_name: str, template: str, max_length: int, policy: str, seed: int,
                 heldout_fraction: float):
        from transformers import AutoTokenizer

        from common.models import resolve_model
        from train.masking import hf_encoder

        # Resolved here, on the actor's node: the driver's cache path may not exist on other nodes.
        self.encoder = hf_encoder(AutoTokenizer.from_pretrained(resolve_model(model_name)))
        self.args = (template, max_length, policy)
        self.seed, self.fraction = seed, heldout_fraction

    def __call__(self, batch):
        from train.masking import tokenize_rows

        rows = batch.to_pylist()
        out = tokenize_rows(rows, self.args[0], self.encoder, *self.args[1:])
        out["heldout"] = [heldout_key(i, self.seed) < self.fraction for i in out["id"]]
        return out


def pack_batch(batch: dict, max_length: int, pad_id: int) -> dict:
    from train.packing import pack

    return pack(list(batch["input_ids"]), list(batch["labels"]), max_length, pad_id)


@dataclass
class Prepared:
    train: object  # ray.data.Dataset of training rows (materialized)
    heldout: list[dict]  # small list of tokenised held-out rows (id, input_ids, labels)
    rows_read: int
    counts: dict[str, int]  # status -> rows ("ok" + one key per drop reason)
    truncated: int
    sequences: int  # training rows (packed sequences, or samples when unpacked)
    real_tokens: int
    stats: dict = field(default_factory=dict)


def check_input(path: str) -> None:
    from common import storage

    if not storage.exists(path):
        raise UserError(f"training data not found: {path} (run the evolve job first, or set data.path)")


def count_statuses(tokenized) -> tuple[int, dict[str, int], int]:
    """One streaming pass over the small columns: rows, rows per status, truncated rows."""
    from collections import Counter

    counts: Counter = Counter()
    truncated = 0
    for batch in tokenized.select_columns(["status", "truncated"]).iter_batches(batch_size=8192,
                                                                               batch_format="pyarrow"):
        counts.update(batch.column("status").to_pylist())
        truncated += sum(batch.column("truncated").to_pylist())
    return sum(counts.values()), dict(counts), truncated


def prepare(cfg: TrainConfig, pad_id: int) -> Prepared:
    import ray

    try:
        ds = ray.data.read_parquet(cfg.data.path)
        columns = set(ds.schema().names)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read training data {cfg.data.path}: {str(exc).splitlines()[0]}") from None
    if "id" not in columns or not ({"messages"} <= columns or {"instruction", "response"} <= columns):
        raise UserError(f"{cfg.data.path}: needs columns id and messages (or instruction, response); "
                        f"found {sorted(columns)}")
    ds = ds.select_columns([c for c in INPUT_COLUMNS if c in columns])
    d = cfg.data
    tokenized = ds.map_batches(Tokenize, batch_format="pyarrow", batch_size=256,
                               compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                               fn_constructor_args=(cfg.model.name, d.template, d.max_length, d.truncation,
                                                    d.seed, d.heldout_fraction)).materialize()
    rows_read, counts, truncated = count_statuses(tokenized)
    if rows_read == 0:
        raise UserError(f"training data {cfg.data.path} is empty")
    if counts.get("ok", 0) == 0:
        raise UserError(f"no usable training rows in {cfg.data.path}: {counts}")
    from ray.data.expressions import col

    usable = tokenized.filter(expr=col("status") == "ok")
    heldout = []
    if d.heldout_fraction > 0:
        heldout = usable.filter(expr=col("heldout") == True)  # noqa: E712 (builds an expression)
        heldout = heldout.select_columns(["id", "input_ids", "labels"]).take(256)
    train = usable.filter(expr=col("heldout") == False)  # noqa: E712
    train = train.select_columns(["input_ids", "labels", "n_tokens"])
    train = train.random_shuffle(seed=d.seed)
    if d.packing:
        train = train.map_batches(pack_batch, batch_size=d.pack_group_rows, batch_format="numpy",
                                  fn_kwargs={"max_length": d.max_length, "pad_id": pad_id})
    else:
        train = train.rename_columns({"n_tokens": "n_real"})
    train = train.materialize()
    sequences = train.count()
    real = int(train.sum("n_real") or 0) if sequences else 0  # one more small pass
    return Prepared(train=train, heldout=heldout, rows_read=rows_read, counts=counts, truncated=truncated,
                    sequences=sequences, real_tokens=real)
