"""Pack tokenised samples into full fixed-length sequences, or pad a batch to its longest.

A packed row holds several samples back to back. `position_ids` restart at 0 at every sample
(and at the padding tail); with no attention mask, transformers derives a block-diagonal
causal mask from those restarts (`masking_utils.find_packed_sequence_indices`), so packed
samples never attend to each other. Every sample's first label is already -100
(train.masking), so no sample is asked to predict its neighbour's first token either.

Everything here is deterministic: a group of samples packs to the same rows whatever order
Ray Data delivered it in, so a rerun of the job trains on the same rows in the same order.
"""
from __future__ import annotations

import hashlib

import numpy as np

from train.masking import IGNORE


def stable_hash(*parts) -> int:
    """A signed 64-bit key of `parts` (sha1): the same on every node, run and Python process."""
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def unit_interval(*parts) -> float:
    """A stable uniform number in [0, 1) per `parts` (for splits that do not depend on order)."""
    return (stable_hash(*parts) + 2**63) / 2**64


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
    return pack_bins(input_ids, labels, bins, max_length, pad_id)


def pack_bins(input_ids: list, labels: list, bins: list[list[int]], max_length: int, pad_id: int) -> dict:
    """The packed rows of given bins of sample indices (see `pack`)."""
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


def pack_group(input_ids: list, labels: list, keys: list[int], max_length: int, pad_id: int) -> dict:
    """`pack` of one group of samples in key order, plus a stable key per packed row (from its
    samples' keys): the same rows whatever order the group arrived in."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ids, labs = [input_ids[i] for i in order], [labels[i] for i in order]
    bins = first_fit_decreasing([len(x) for x in ids], max_length)
    packed = pack_bins(ids, labs, bins, max_length, pad_id)
    packed["key"] = [stable_hash(*sorted(keys[order[i]] for i in members)) for members in bins]
    return packed


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
