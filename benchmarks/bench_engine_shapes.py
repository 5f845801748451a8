"""Which engine shape makes the evolve job faster on this CPU: the preset's pool (one 1-thread hf actor
per core) or one actor with all the threads? The job as a user runs it, the two shapes alternated.

    python benchmarks/bench_engine_shapes.py [--seeds 16] [--rounds 4] [--repeats 2] [--threads 2]
        [--override KEY=VALUE ...]

Each run is `python -m jobs.evolve --config configs/local.yaml` with `seeds.limit` and `evolve.rounds`
set and nothing else changed (the preset's token caps, its seeds' own round-0 answers), once as the
preset's pool and once as `generation.concurrency=[1,1]` with `--threads` torch threads, alternated
`--repeats` times (pool first, then one actor, and so on), so the machine's drift falls on both.
Prints per run the tokens the records kept over the chains' span (the first chain start to the last
chain end of the slowest actor) and the job's whole wall (Ray start and model loads included: what
`make run` waits for), then the pool's rate over one actor's, per pair and over the means.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_engine_saturation import run_evolve
from bench_generation_common import engine_shape

POOL, ONE = "pool (preset)", "one actor"


def run_shape(shape: str, args, out: Path) -> dict:
    """One job: its kept tokens over the slowest actor's chain span, its wall, and each actor's figures."""
    shape_overrides = [] if shape == POOL else engine_shape("hf", args.threads)
    summary, _, wall = run_evolve(["generation.backend=hf", f"seeds.limit={args.seeds}",
                                   f"evolve.rounds={args.rounds}", f"output.path={out}", "output.overwrite=true",
                                   *shape_overrides, *args.override], out, shape)
    actors = list(summary["actors"].values())
    kept = summary["generated_tokens"] - sum(a.get("unused_tokens", 0) for a in actors)
    span = max(a["chain_seconds"] for a in actors)
    return {"rate": kept / span, "kept": kept, "span": span, "wall": wall,
            "actors": [(a["seeds"], a["chain_seconds"], a.get("mean_batch_rows")) for a in actors]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="the one actor's torch threads")
    parser.add_argument("--override", action="append", default=[], help="one more job override, both shapes")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {POOL: [], ONE: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for shape in (POOL, ONE):
                run = run_shape(shape, args, Path(tmp) / f"{'pool' if shape == POOL else 'one'}-{repeat}")
                runs[shape].append(run)
                actors = "; ".join(f"{seeds} seeds, {seconds:.1f} s, {rows or 0:.1f} rows per step"
                                   for seeds, seconds, rows in run["actors"])
                print(f"{shape}, run {repeat + 1}: {run['kept']} tok kept in {run['span']:.1f} s of chains = "
                      f"{run['rate']:.1f} tok/s; wall {run['wall']:.0f} s ({actors})", flush=True)
    pairs = [p["rate"] / o["rate"] for p, o in zip(runs[POOL], runs[ONE])]
    walls = [p["wall"] / o["wall"] for p, o in zip(runs[POOL], runs[ONE])]
    mean = {shape: statistics.mean(r["rate"] for r in rs) for shape, rs in runs.items()}
    print(f"{args.seeds} seeds x {args.rounds} rounds: the pool's tokens/s over one {args.threads}-thread actor's, "
          f"per pair {', '.join(f'{r:.2f}x' for r in pairs)}; over the means {mean[POOL]:.1f} / {mean[ONE]:.1f} = "
          f"{mean[POOL] / mean[ONE]:.2f}x; the job's wall, pool over one actor, per pair "
          f"{', '.join(f'{w:.2f}x' for w in walls)}", flush=True)


if __name__ == "__main__":
    main()
