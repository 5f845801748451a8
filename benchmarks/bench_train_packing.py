"""Benchmark 2: sequence packing vs pad-to-longest, on two length distributions.

Fill = real (non-pad) tokens / tokens fed. Printed for both distributions:
- packed rows of --max-length (first-fit-decreasing, what optim.batch_unit=sequences trains on);
  batch_unit=samples with packing concatenates each micro batch into one row: 100% by construction;
- pad-to-longest batches of B samples in random order (B = samples per packed row, and 8/16/64);
- their ratio, which is the useful-tokens/s gain if a fed token costs the same either way.
Distributions:
1. the evolve job's output (outputs/evolve-local/training/parquet, tokenised with the small
   model's tokenizer; synthetic evolve-like rows if absent: the script says which);
2. long-tailed WizardLM-like lengths, sampled (not generated): lognormal token counts whose mean
   is the published size of WizardLM_evol_instruct_V2 (dataset card: 673,547,914 bytes for
   286,000 conversations, ~2,355 bytes, ~590 tokens at ~4 bytes/token), sigma 1.0 (assumed: no
   spread is published), capped at --max-length like data.truncation=truncate.
With --train, also the measured useful tokens/s of both layouts on distribution 1 (tiny Llama).

    .venv/bin/python benchmarks/bench_train_packing.py [--train]
Ratio printed last: packed fill / pad-to-longest fill on the long-tailed distribution.
"""
from __future__ import annotations

import argparse
import math
import random
import tempfile
from pathlib import Path

from bench_train_common import bare_train, load_rows, tokenize

WIZARDLM_MEAN_TOKENS = 673_547_914 / 286_000 / 4.0  # dataset card bytes per conversation / ~4 bytes per token
LONG_TAIL_SIGMA = 1.0


def long_tailed_lengths(n: int, max_length: int, seed: int = 0) -> list[int]:
    """Lognormal token counts with mean WIZARDLM_MEAN_TOKENS (before the cap at max_length)."""
    rng = random.Random(seed)
    mu = math.log(WIZARDLM_MEAN_TOKENS) - LONG_TAIL_SIGMA ** 2 / 2
    return [max(8, min(max_length, int(rng.lognormvariate(mu, LONG_TAIL_SIGMA)))) for _ in range(n)]


def packed_fill(lengths: list[int], max_length: int) -> tuple[float, int]:
    from train.packing import first_fit_decreasing

    rows = len(first_fit_decreasing(lengths, max_length))
    return sum(lengths) / (rows * max_length), rows


def padded_fill(lengths: list[int], batch: int) -> float:
    """Pad-to-longest fill over random-order batches of `batch` samples (the last partial one too)."""
    fed = sum(len(chunk) * max(chunk) for chunk in (lengths[i:i + batch] for i in range(0, len(lengths), batch)))
    return sum(lengths) / fed


def fill_table(name: str, lengths: list[int], max_length: int) -> float:
    lengths = list(lengths)
    random.Random(1).shuffle(lengths)
    ordered = sorted(lengths)
    fill, rows = packed_fill(lengths, max_length)
    per_row = max(1, round(len(lengths) / rows))
    print(f"{name}: {len(lengths)} samples, tokens/sample mean {sum(lengths) / len(lengths):.0f}, median "
          f"{ordered[len(ordered) // 2]}, p90 {ordered[int(len(ordered) * 0.9)]}, max {ordered[-1]}")
    print(f"  packed rows of {max_length}: {rows} rows, {fill:.1%} real tokens ({per_row} samples/row)")
    for batch in sorted({per_row, 8, 16, 64}):
        pad = padded_fill(lengths, batch)
        print(f"  pad-to-longest batches of {batch}: {pad:.1%} real tokens; packed / padded = {fill / pad:.2f}x")
    return fill / padded_fill(lengths, per_row)  # the same samples per forward as one packed row


def train_comparison(rows: list[dict], model_dir: str, max_length: int, threads: int) -> None:
    """Measured useful tokens/s, packed rows (1 per micro batch) vs padded batches of as many samples."""
    import numpy as np

    from train.packing import pack, pad_to_longest

    ids, labels, pad = tokenize(rows, model_dir, max_length)
    packed = pack(ids, labels, max_length, pad)
    per_row = max(1, round(len(ids) / len(packed["input_ids"])))
    packed_micro = [{k: np.array([packed[k][i]]) for k in ("input_ids", "labels", "position_ids")}
                    | {"n_real": packed["n_real"][i]} for i in range(len(packed["input_ids"]))]
    padded_micro = []
    for i in range(0, len(ids), per_row):
        batch = pad_to_longest(ids[i:i + per_row], labels[i:i + per_row], pad)
        padded_micro.append(batch | {"n_real": int(batch["attention_mask"].sum())})
    results = {name: bare_train(model_dir, micro, accum=1, lr=1e-3, warmup_steps=2, threads=threads, skip_steps=1)
               for name, micro in (("padded", padded_micro), ("packed", packed_micro))}
    print(f"measured (tiny Llama, {threads} threads): packed {results['packed']['real_tokens_per_s']:.0f} vs padded "
          f"{results['padded']['real_tokens_per_s']:.0f} useful tokens/s: "
          f"{results['packed']['real_tokens_per_s'] / results['padded']['real_tokens_per_s']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--data", default=None)
    parser.add_argument("--train", action="store_true", help="also measure tokens/s on distribution 1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from train.fixtures import make_tiny_model

    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-pack-")) / "model", layers=4, hidden=128)
    rows, source = load_rows(args.data, args.rows)
    ids, _, _ = tokenize(rows, model_dir, args.max_length)
    evolved = fill_table(f"1. {source}", [len(x) for x in ids], args.max_length)
    print(f"   ratio packed / pad-to-longest (same samples per forward): {evolved:.2f}x")
    tail = fill_table(f"2. long-tailed WizardLM-like lengths (lognormal, mean {WIZARDLM_MEAN_TOKENS:.0f} tokens from "
                      f"the WizardLM_evol_instruct_V2 dataset card, sigma {LONG_TAIL_SIGMA} assumed)",
                      long_tailed_lengths(args.rows, args.max_length), args.max_length)
    if args.train:
        train_comparison(rows, model_dir, min(args.max_length, 1024), args.threads)
    print(f"ratio packed / pad-to-longest fill, long-tailed distribution: {tail:.2f}x")


if __name__ == "__main__":
    main()
