"""hf batching through the evolve job, one run after the other: static batches without and with
`generation.batch_refill`, then continuous batching (`generation.batching`, the default).

    python benchmarks/bench_hf_batching.py [--seeds 16] [--rounds 2] [--tokens 256] [--dtype bfloat16] [--greedy]
        [--modes static,refill,continuous] [--baseline refill]
    python benchmarks/bench_hf_batching.py --seeds 16 --rounds 4 --tokens 128 --greedy --modes ahead0,ahead1 --baseline ahead0
    python benchmarks/bench_hf_batching.py --seeds 16 --rounds 4 --tokens 128 --greedy --modes prefix_off,prefix_on --baseline prefix_off
    python benchmarks/bench_hf_batching.py --seeds 16 --rounds 4 --tokens 128 --greedy --modes fallback_off,fallback_on --baseline fallback_off

A static batch runs until its longest row ends; with batch_refill it stops once half of its rows are
done while a request waits, and the unfinished rows go on in the next batch (prefilled again). Continuous
batching decodes one step at a time and lets rows leave and join between steps, the KV cache kept
(generation/continuous.py). Every run is the job as a user runs it (`python -m jobs.evolve --config
configs/local.yaml`, the same seeds, sampling and token caps as bench_engine_saturation.py's job side).
`ahead0` / `ahead1`: continuous, with `evolve.rounds_ahead` 0 (one round after the other) and 1 (the
next round started while a candidate is judged); the other modes run the default (1). `prefix_off` /
`prefix_on`: continuous, without and with the prompt-prefix cache (`generation.prefix_cache_tokens`);
`fallback_off` / `fallback_on`: without and with `evolve.fallback_rewrites`. Prints each
run's tokens/s (those its records kept: rounds started ahead and cancelled are not counted) over the
actor's chain seconds, its wall and rows per batch (per decode step when continuous), then each mode
against `--baseline` (static + refill by default, the hf default before continuous).
Sampled at T=1 the runs write different texts (different eliminations, lengths and request counts);
`--greedy` gives them nearly the same work (a greedy row's text depends on its batch only through
bf16 rounding with the padding), so seconds compare like for like.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_engine_saturation import run_job

MODES = {"static": ["generation.batching=static", "generation.batch_refill=false"],
         "refill": ["generation.batching=static", "generation.batch_refill=true"],
         "continuous": ["generation.batching=continuous"],
         # continuous, one round after the other vs the next round started while a candidate is judged
         "ahead0": ["generation.batching=continuous", "evolve.rounds_ahead=0"],
         "ahead1": ["generation.batching=continuous", "evolve.rounds_ahead=1"],
         # continuous, hf's prompt-prefix cache off vs on (the default)
         "prefix_off": ["generation.batching=continuous", "generation.prefix_cache_tokens=0"],
         "prefix_on": ["generation.batching=continuous"],
         # continuous, without and with fallback rewrites (the default)
         "fallback_off": ["generation.batching=continuous", "evolve.fallback_rewrites=false"],
         "fallback_on": ["generation.batching=continuous"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="max_tokens of rewrites and answers")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--greedy", action="store_true", help="rewrites and answers at temperature 0: the same work")
    parser.add_argument("--modes", default="static,refill,continuous", help=f"of {', '.join(MODES)}")
    parser.add_argument("--baseline", default="refill", help="the mode the others are compared with")
    args = parser.parse_args()
    job = argparse.Namespace(seeds=args.seeds, rounds=args.rounds, evolve_tokens=args.tokens, respond_tokens=args.tokens,
                             threads=args.threads, prefix_caching="default")  # overrides set per run below
    sampling = (["evolve.evolve_sampling.temperature=0", "evolve.respond_sampling.temperature=0"]
                if args.greedy else [])
    rates, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            job.override = [f"generation.dtype={args.dtype}", *MODES[mode], *sampling]
            summary, _, wall = run_job("hf", job, Path(tmp) / mode)
            [gauges] = summary["actors"].values()
            # tokens of rounds started ahead and cancelled are not the work the records kept
            rates[mode] = (summary["generated_tokens"] - gauges.get("unused_tokens", 0)) / gauges["chain_seconds"]
            seconds[mode] = gauges["chain_seconds"]
            print(f"{mode}: {summary['requests']} requests, {summary['generated_tokens']} tokens in "
                  f"{gauges['chain_seconds']:.1f} s of chains = {rates[mode]:.1f} tok/s (wall {wall:.1f} s), "
                  f"{gauges['mean_chains_in_flight']:.1f} chains in flight, {gauges['mean_batch_rows']:.2f} rows per "
                  f"{'decode step' if 'generation.batching=continuous' in MODES[mode] else 'batch'}, "
                  f"{gauges.get('released_rows') or 0} rows carried to a later batch, "
                  f"{gauges.get('unused_tokens', 0)} tokens in cancelled rounds"
                  + (f", {100 * gauges['prefix_cached_share']:.0f}% of prompt tokens from the prefix cache"
                     if gauges.get("prefix_cached_share") is not None else ""), flush=True)
    if args.baseline in rates:
        for mode in rates.keys() - {args.baseline}:
            print(f"{mode} / {args.baseline}: {rates[mode] / rates[args.baseline]:.2f}x tokens/s, "
                  f"{seconds[mode] / seconds[args.baseline]:.2f}x the chains' seconds")


if __name__ == "__main__":
    main()
