"""Benchmark 2: sequence packing vs pad-to-longest, useful (non-pad) tokens/s.

The evolved length distribution (outputs/evolve-local/training/parquet, cycled; synthetic
evolve-like rows if absent), the tiny Llama, one process on the same cores, the same samples:
- packed: first-fit-decreasing into rows of --max-length (position ids restart per sample),
  --pack-rows rows per micro batch;
- padded: --pad-batch samples in dataset order per micro batch, padded to the longest.
Both train every sample once (AdamW, one optimizer step per micro batch).

    .venv/bin/python benchmarks/bench_train_packing.py
Ratio printed last: packed useful tokens/s / padded useful tokens/s (target >= 2x).
"""
from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from bench_train_common import bare_train, load_rows, tokenize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--pack-rows", type=int, default=1)
    parser.add_argument("--pad-batch", type=int, default=0, help="default: samples per packed row, rounded")
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import numpy as np

    from train.fixtures import make_tiny_model
    from train.packing import pack, pad_to_longest

    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-pack-")) / "model", layers=4, hidden=128)
    rows, source = load_rows(args.data, args.rows)
    ids, labels, pad = tokenize(rows, model_dir, args.max_length)
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    ids, labels = [ids[i] for i in order], [labels[i] for i in order]
    packed = pack(ids, labels, args.max_length, pad)
    n_packed = len(packed["input_ids"])
    pad_batch = args.pad_batch or max(1, round(len(ids) / n_packed) * args.pack_rows)

    packed_micro = []
    for i in range(0, n_packed, args.pack_rows):
        sl = slice(i, i + args.pack_rows)
        packed_micro.append({k: np.array(packed[k][sl]) for k in ("input_ids", "labels", "position_ids")}
                            | {"n_real": sum(packed["n_real"][sl])})
    padded_micro = []
    for i in range(0, len(ids), pad_batch):
        batch = pad_to_longest(ids[i:i + pad_batch], labels[i:i + pad_batch], pad)
        padded_micro.append(batch | {"n_real": int(batch["attention_mask"].sum())})

    def fed(micro):
        return sum(b["input_ids"].size for b in micro)

    real = sum(len(x) for x in ids)
    results = {}
    for name, micro in (("padded", padded_micro), ("packed", packed_micro), ("padded ", padded_micro)):
        results[name] = bare_train(model_dir, micro, accum=1, lr=1e-3, warmup_steps=2, threads=args.threads,
                                   skip_steps=1)
    padded = max(results["padded"], results["padded "], key=lambda r: r["real_tokens_per_s"])
    lengths = sorted(len(x) for x in ids)
    print(f"data: {source}; {len(ids)} samples, tokens/sample median {lengths[len(lengths) // 2]}, "
          f"p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]}")
    print(f"packed: {n_packed} rows of {args.max_length} ({args.pack_rows}/micro batch), "
          f"{real / fed(packed_micro):.1%} of fed tokens are real; "
          f"{results['packed']['real_tokens_per_s']:.0f} useful tokens/s")
    print(f"padded: {len(padded_micro)} micro batches of {pad_batch} samples, "
          f"{real / fed(padded_micro):.1%} of fed tokens are real; {padded['real_tokens_per_s']:.0f} useful tokens/s "
          f"(best of a run before and after the packed one)")
    for size in (8, 16, 32, 64):  # fill only (no training): padding grows with the batch
        fill = [real_fill(ids[i:i + size]) for i in range(0, len(ids) - size + 1, size)]
        if fill:
            print(f"pad-to-longest batches of {size}: {sum(fill) / len(fill):.1%} of fed tokens are real")
    print(f"ratio packed / pad-to-longest useful tokens/s: "
          f"{results['packed']['real_tokens_per_s'] / padded['real_tokens_per_s']:.2f}x")


def real_fill(batch: list) -> float:
    return sum(len(x) for x in batch) / (len(batch) * max(len(x) for x in batch))


if __name__ == "__main__":
    main()
