"""One worker's training units in memory and the micro batches cut from them (pure numpy).

A unit is what `optim.batch_unit` counts: a sample, or a packed row of `data.max_length`.
Each worker holds its share of the units (1/world of the data: ~100-200 MB of int32 per GPU
worker for 250K WizardLM samples) in key order, and every epoch feeds them in a permutation
seeded by (seed, epoch, rank). The rows a worker feeds are thus a pure function of the plan:
a restarted or rerun worker skips exactly the micro batches it had done and feeds the ones it
had not, and each epoch has an order of its own.

Collate modes (how the `micro_batch_size` units of one forward become model inputs):
- "one_row": concatenated into one row [1, T] with restarting position ids and no attention
  mask. transformers then keeps samples apart: sdpa/eager through a block-diagonal mask,
  flash_attention_2 through varlen attention, which it only derives when the batch is 1 row.
- "stacked": packed rows of equal length side by side, [micro, max_length] (sdpa/eager only).
- "padded": samples padded to the longest, with an attention mask (data.packing=false).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.masking import IGNORE
from train.packing import pad_to_longest


@dataclass
class Units:
    input_ids: list  # one int32 array per unit
    labels: list
    position_ids: list
    n_real: np.ndarray  # non-padding tokens per unit
    targets: np.ndarray  # label positions the loss averages over (shifted labels != IGNORE) per unit

    def __len__(self) -> int:
        return len(self.input_ids)


def count_targets(labels) -> int:
    """Positions a causal LM loss is computed on: labels shifted by one, without IGNORE."""
    return int((np.asarray(labels)[..., 1:] != IGNORE).sum())


def units_from_rows(rows: dict) -> Units:
    """Columns key, input_ids, labels, n_real (+ position_ids for packed rows) -> Units in key order."""
    order = np.argsort(np.asarray(rows["key"], dtype=np.int64), kind="stable")
    ids = [np.asarray(rows["input_ids"][i], dtype=np.int32) for i in order]
    labels = [np.asarray(rows["labels"][i], dtype=np.int32) for i in order]
    if "position_ids" in rows:
        positions = [np.asarray(rows["position_ids"][i], dtype=np.int32) for i in order]
    else:
        positions = [np.arange(len(x), dtype=np.int32) for x in ids]
    return Units(ids, labels, positions, np.asarray(rows["n_real"], dtype=np.int64)[order],
                 np.array([count_targets(x) for x in labels], dtype=np.int64))


def collate_mode(packing: bool, batch_unit: str, attn_implementation: str) -> str:
    if not packing:
        return "padded"
    if batch_unit == "samples" or attn_implementation == "flash_attention_2":
        return "one_row"
    return "stacked"


def epoch_order(n_units: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """The order in which a worker feeds its units in one epoch (a seeded permutation)."""
    return np.random.default_rng([seed, epoch, rank]).permutation(n_units)


def micro_batch(order: np.ndarray, step: int, accum_index: int, accum: int, micro: int) -> np.ndarray:
    """Unit indices of micro batch `accum_index` of optimizer step `step` (within the epoch)."""
    start = (step * accum + accum_index) * micro
    return order[start:start + micro]


def step_targets(units: Units, order: np.ndarray, steps: int, accum: int, micro: int) -> np.ndarray:
    """Loss positions per optimizer step of this worker, for every step of the epoch."""
    per_micro = units.targets[order[:steps * accum * micro]].reshape(steps, accum * micro)
    return per_micro.sum(axis=1)


def collate(units: Units, index: np.ndarray, mode: str, pad_id: int) -> tuple[dict, int]:
    """Model inputs (int64 arrays) of the units at `index`, and their count of real tokens."""
    ids = [units.input_ids[i] for i in index]
    labels = [units.labels[i] for i in index]
    real = int(units.n_real[index].sum())
    if mode == "padded":
        return pad_to_longest(ids, labels, pad_id), real
    positions = [units.position_ids[i] for i in index]
    if mode == "one_row":
        def join(parts):
            return np.concatenate(parts).astype(np.int64)[None, :]
    elif mode == "stacked":
        def join(parts):
            return np.stack(parts).astype(np.int64)
    else:
        raise ValueError(f"unknown collate mode {mode!r}")
    return {"input_ids": join(ids), "labels": join(labels), "position_ids": join(positions)}, real
