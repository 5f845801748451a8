"""hf's cache tiers (`generation.cache_tiers`) through the evolve job: one KV cache as wide as the
running batch's longest row, against rows in caches of their own widths. The job as a user runs it
(`configs/local.yaml`, the pool of 1-thread actors), the two settings alternated.

    python benchmarks/bench_hf_cache_tiers.py [--seeds 96] [--rounds 2] [--repeats 2] [--greedy] [--tiers 1,2]

A few bundled seeds carry a long input (a table, a paragraph), so their rewrite prompts are several
times longer than the rest; with one cache, every row of a decode step attends over such a row's
columns. Prints each run's kept tokens over the slowest actor's chain span (as bench_engine_shapes.py),
then each setting's tokens/s over the first's, per pair and over the means. At T=1 the runs write
different texts; `--greedy` (rewrites and answers at temperature 0) gives them nearly the same work
(a greedy row's text depends on its batch only through bf16 rounding).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_engine_shapes import evolve_speed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiers", default="1,2", help="generation.cache_tiers values, alternated; the first is the baseline")
    parser.add_argument("--greedy", action="store_true", help="rewrites and answers at temperature 0: the same work")
    parser.add_argument("--override", action="append", default=[], help="one more job override, every run")
    args = parser.parse_args()
    settings = [int(t) for t in args.tiers.split(",")]
    greedy = ["evolve.evolve_sampling.temperature=0", "evolve.respond_sampling.temperature=0"] if args.greedy else []
    speeds: dict[int, list[float]] = {tiers: [] for tiers in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for tiers in settings:
                result = evolve_speed(args.seeds, args.rounds, [f"generation.cache_tiers={tiers}", *greedy, *args.override],
                                      Path(tmp) / f"tiers{tiers}-{repeat}", f"cache_tiers={tiers}")
                speeds[tiers].append(result["speed"])
                print(f"cache_tiers={tiers} run {repeat + 1}: {result['line']}", flush=True)
    base = settings[0]
    for tiers in settings[1:]:
        pairs = ", ".join(f"{s / b:.2f}x" for s, b in zip(speeds[tiers], speeds[base]))
        print(f"{args.seeds} seeds x {args.rounds} rounds{' (greedy)' if args.greedy else ''}: cache_tiers={tiers} over "
              f"cache_tiers={base}, tokens/s per pair {pairs}; over the means {statistics.mean(speeds[tiers]):.1f} / "
              f"{statistics.mean(speeds[base]):.1f} = {statistics.mean(speeds[tiers]) / statistics.mean(speeds[base]):.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
