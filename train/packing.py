"""Pack tokenised samples into full fixed-length sequences, or pad a batch to its longest.

A packed row holds several samples back to back. `position_ids` restart at 0 at every sample
(and at the padding tail); with no attention mask, transformers derives a block-diagonal
causal mask from those restarts (`masking_utils.find_packed_sequence_indices`), so packed
samples never attend to each other. Every sample's first label is already -100
(train.masking), so no sample is asked to predict its neighbour's first token either.
"""
from __future__ import annotations

import numpy as np

from train.masking import IGNORE


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices, each with total length <= capacity (all indices used once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"sample of {lengths[i]} tokens does not fit max_length {capacity}")
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack(input_ids: list[list[int]], labels: list[list[int]], max_length: int, pad_id: int) -> dict:
    """Columns of packed rows: input_ids, labels, position_ids (each of max_length), n_real, n_samples."""
    bins = first_fit_decreasing([len(x) for x in input_ids], max_length)
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "n_real": [], "n_samples": []}
    for members in bins:
        ids: list[int] = []
        labs: list[int] = []
        pos: list[int] = []
        for i in members:
            ids += list(input_ids[i])
            labs += list(labels[i])
            pos += range(len(input_ids[i]))
        n_real = len(ids)
        pad = max_length - n_real
        # The padding tail is its own "sample" (positions restart): real tokens never see it.
        out["input_ids"].append(ids + [pad_id] * pad)
        out["labels"].append(labs + [IGNORE] * pad)
        out["position_ids"].append(pos + list(range(pad)))
        out["n_real"].append(n_real)
        out["n_samples"].append(len(members))
    return out


def pad_to_longest(input_ids: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """A batch padded on the right to its longest sample, with an attention mask (no packing)."""
    longest = max(len(x) for x in input_ids)
    batch = {"input_ids": np.full((len(input_ids), longest), pad_id, dtype=np.int64),
             "labels": np.full((len(input_ids), longest), IGNORE, dtype=np.int64),
             "attention_mask": np.zeros((len(input_ids), longest), dtype=np.int64)}
    for row, (ids, labs) in enumerate(zip(input_ids, labels)):
        batch["input_ids"][row, : len(ids)] = ids
        batch["labels"][row, : len(labs)] = labs
        batch["attention_mask"][row, : len(ids)] = 1
    return batch


def stack_packed(rows: dict) -> dict[str, np.ndarray]:
    """Ray Data numpy batch of packed rows -> int64 arrays [batch, max_length]."""
    return {key: np.stack([np.asarray(x, dtype=np.int64) for x in rows[key]])
            for key in ("input_ids", "labels", "position_ids")}
