"""hf batches with and without `generation.batch_refill`, through the evolve job, one after the other.

    python benchmarks/bench_hf_batch_refill.py [--seeds 16] [--rounds 2] [--tokens 256] [--dtype bfloat16] [--greedy]

A static batch runs until its longest row ends; with batch_refill it stops once half of its rows are
done while a request waits, and the unfinished rows go on in the next batch (prefilled again). Both
runs are the job as a user runs it (`python -m jobs.evolve --config configs/local.yaml`, the same
seeds, sampling and token caps as bench_engine_saturation.py's job side). Prints each run's generated
tokens/s over the actor's chain seconds, its wall, rows per batch and rows carried over, then on/off.
Sampled at T=1 the two runs write different texts (different eliminations, lengths and request counts),
and a static batch's tokens/s grows with its rows' lengths; `--greedy` gives both runs the same work
(a released row's greedy text equals the one it writes alone), so seconds compare like for like.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_engine_saturation import run_job


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="max_tokens of rewrites and answers")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--greedy", action="store_true", help="rewrites and answers at temperature 0: the same work")
    args = parser.parse_args()
    job = argparse.Namespace(seeds=args.seeds, rounds=args.rounds, evolve_tokens=args.tokens, respond_tokens=args.tokens,
                             threads=args.threads, prefix_caching="default")  # overrides set per run below
    sampling = (["evolve.evolve_sampling.temperature=0", "evolve.respond_sampling.temperature=0"]
                if args.greedy else [])
    rates, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for refill in ("false", "true"):
            job.override = [f"generation.dtype={args.dtype}", f"generation.batch_refill={refill}", *sampling]
            summary, _, wall = run_job("hf", job, Path(tmp) / f"refill-{refill}")
            [gauges] = summary["actors"].values()
            rates[refill] = summary["generated_tokens"] / gauges["chain_seconds"]
            seconds[refill] = gauges["chain_seconds"]
            print(f"batch_refill={refill}: {summary['requests']} requests, {summary['generated_tokens']} tokens in "
                  f"{gauges['chain_seconds']:.1f} s of chains = {rates[refill]:.1f} tok/s (wall {wall:.1f} s), "
                  f"{gauges['mean_batch_rows']:.2f} rows per batch, {gauges.get('released_rows') or 0} rows "
                  f"carried to a later batch", flush=True)
    print(f"batch_refill on/off: {rates['true'] / rates['false']:.2f}x tokens/s, "
          f"{seconds['true'] / seconds['false']:.2f}x the chains' seconds")


if __name__ == "__main__":
    main()
