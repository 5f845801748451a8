"""Which hf engine shape makes a job faster on this CPU: one 1-thread actor per core, or one actor with
all the threads? The job as a user runs it, the two shapes alternated.

    python benchmarks/bench_engine_shapes.py [--job evolve|evaluate] [--seeds 16] [--rounds 4]
        [--repeats 2] [--cores 2] [--override KEY=VALUE ...]

evolve: `python -m jobs.evolve --config configs/local.yaml` with `seeds.limit` and `evolve.rounds` set and
nothing else changed (the preset's token caps, its seeds' own round-0 answers). Its rate is the tokens
the records kept over the chains' span (the first chain start to the last chain end of the slowest
actor); each run's wall (Ray start and model loads included: what `make run` waits for) is printed too.

evaluate: `python -m jobs.evaluate --config configs/evaluate_local.yaml` with the base model as the
candidate too (prompted `plain`, so that all three stages run; the bench needs no trained model) and no
evolution analysis, each role in the shape; its time is the stages' seconds (answers and verdicts).

Each shape runs `--repeats` times, alternated (the pool first, then one actor, and so on), so the
machine's drift falls on both; then the pool's speed over one actor's, per pair and over the means.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench_engine_saturation import run_evolve, run_module
from bench_generation_common import one_actor

POOL, ONE = "pool", "one actor"
ROLES = ("candidate", "baseline", "judge")


def shape_settings(shape: str, cores: int) -> dict[str, str]:
    """One generation section's keys for a shape: `cores` actors of one thread (each 1/cores of Ray's
    CPUs, so reading tasks keep room) or one actor of `cores` threads."""
    if shape == POOL:
        return {"concurrency": f"[{cores},{cores}]", "num_cpus": str(round(1 / cores, 3)), "torch_threads": "1"}
    return one_actor(cores)


def run_evolve_shape(shape: str, args, out: Path) -> dict:
    settings = [f"generation.{key}={value}" for key, value in shape_settings(shape, args.cores).items()]
    return evolve_speed(args.seeds, args.rounds, [*settings, *args.override], out, shape)


def evolve_speed(seeds: int, rounds: int, job_overrides: list[str], out: Path, label: str) -> dict:
    """One hf evolve job (configs/local.yaml, `seeds` x `rounds`, these overrides): kept tokens over the
    slowest actor's chain span, its wall, and each actor's figures."""
    summary, _, wall = run_evolve(["generation.backend=hf", f"seeds.limit={seeds}", f"evolve.rounds={rounds}",
                                   f"output.path={out}", "output.overwrite=true", *job_overrides], out, label)
    actors = list(summary["actors"].values())
    kept = summary["generated_tokens"] - sum(a.get("unused_tokens", 0) for a in actors)
    span = max(a["chain_seconds"] for a in actors)
    detail = "; ".join(f"{a['seeds']} seeds, {a['chain_seconds']:.1f} s, {a.get('mean_batch_rows') or 0:.1f} rows per step"
                       for a in actors)
    return {"speed": kept / span, "wall": wall,
            "line": f"{kept} tok kept in {span:.1f} s of chains = {kept / span:.1f} tok/s; wall {wall:.0f} s ({detail})"}


def run_evaluate_shape(shape: str, args, out: Path) -> dict:
    """One evaluate job (nothing cached: a new output folder): its stages' seconds and its wall."""
    settings = [f"{role}.{key}={value}" for role in ROLES for key, value in shape_settings(shape, args.cores).items()]
    wall = run_module("evaluate", "configs/evaluate_local.yaml",
                      ["candidate.model=smollm2-135m-instruct", "candidate.prompt_format=plain", "evolution.output=null",
                       f"output.path={out}", *settings, *args.override], f"{shape} evaluate")
    stages = json.loads((out / "summary.json").read_text())["seconds"]
    seconds = sum(stages.values())
    return {"speed": 1 / seconds, "wall": wall, "line": f"stages {seconds:.1f} s (" + ", ".join(
        f"{name} {value:.1f}" for name, value in stages.items()) + f"); wall {wall:.0f} s"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", choices=["evolve", "evaluate"], default="evolve")
    parser.add_argument("--seeds", type=int, default=16, help="evolve: seeds.limit")
    parser.add_argument("--rounds", type=int, default=4, help="evolve: evolve.rounds")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2, help="the pool's actors, the one actor's threads")
    parser.add_argument("--override", action="append", default=[], help="one more job override, both shapes")
    args = parser.parse_args()
    run = run_evolve_shape if args.job == "evolve" else run_evaluate_shape
    runs: dict[str, list[dict]] = {POOL: [], ONE: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for shape in (POOL, ONE):
                result = run(shape, args, Path(tmp) / f"{'pool' if shape == POOL else 'one'}-{repeat}")
                runs[shape].append(result)
                print(f"{shape} ({args.cores} x 1 thread)" if shape == POOL else f"{shape} ({args.cores} threads)",
                      f"run {repeat + 1}: {result['line']}", flush=True)
    pairs = [p["speed"] / o["speed"] for p, o in zip(runs[POOL], runs[ONE])]
    walls = [p["wall"] / o["wall"] for p, o in zip(runs[POOL], runs[ONE])]
    mean = {shape: statistics.mean(r["speed"] for r in results) for shape, results in runs.items()}
    if args.job == "evolve":
        size, unit, means = f"{args.seeds} seeds x {args.rounds} rounds", "tokens/s", f"{mean[POOL]:.1f} / {mean[ONE]:.1f}"
    else:
        size, unit, means = "configs/evaluate_local.yaml", "speed (1 / the stages' seconds)", \
            f"{1 / mean[ONE]:.1f} s / {1 / mean[POOL]:.1f} s"
    print(f"{args.job}, {size}: the pool's {unit} over one actor's, per pair {', '.join(f'{r:.2f}x' for r in pairs)}; "
          f"over the means {means} = {mean[POOL] / mean[ONE]:.2f}x; the job's wall, the pool's over one actor's "
          f"(below 1: the pool ends sooner), per pair {', '.join(f'{w:.2f}x' for w in walls)}", flush=True)


if __name__ == "__main__":
    main()
