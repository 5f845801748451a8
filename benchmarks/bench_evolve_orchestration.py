"""Orchestration cost of the evolve job: the whole Ray pipeline with the instant `echo` backend.

    python benchmarks/bench_evolve_orchestration.py [--small 5000] [--large 52000] [--rounds 4] [--actors 2]

Each size runs in its own process (a fresh local Ray) on synthetic Alpaca-style seeds that carry
their answers, so every request is an evolve, respond or equality call (3 per seed per round:
52K seeds x 4 rounds = 624K requests, the paper's size). Prints requests/s at both sizes, then the
driver's peak RSS ratio large/small last (flat memory means the driver streams), and the seeds
each actor of the pool evolved (one seed file spread over every actor).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from common.config import load_config
from evol.config import EvolveConfig
from evol.run import run_evolve
cfg = load_config(EvolveConfig, "configs/local.yaml", sys.argv[1:])
start = time.time()
summary = run_evolve(cfg)
print("RESULT " + json.dumps({"wall": time.time() - start, "requests": summary["requests"],
      "candidates": summary["candidates"], "per_actor": summary["seeds_per_actor"],
      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_seeds(path: Path, count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"id": f"s{i}", "instruction": f"Explain topic number {i} to a student.",
                                  "output": f"Topic {i} is explained here."}) + "\n")


def run(size: int, rounds: int, batch: int, actors: int, workdir: Path) -> dict:
    seeds = workdir / f"seeds_{size}.jsonl"
    write_seeds(seeds, size)
    overrides = [f"seeds.path={seeds}", "seeds.limit=null", f"evolve.rounds={rounds}", "generation.backend=echo",
                 f"generation.max_chains={batch}", f"generation.concurrency=[{actors},{actors}]",
                 f"generation.num_cpus={1 / actors:g}", "seeds.dedupe_partitions=16",
                 f"output.path={workdir / f'out_{size}'}", "output.overwrite=true"]
    proc = subprocess.run([sys.executable, "-c", CHILD, *overrides], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"run at {size} seeds failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[0][len("RESULT "):])
    assert result["candidates"] == size * rounds, result
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=52000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024, help="chains in flight per actor (generation.max_chains)")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {size: run(size, args.rounds, args.batch, args.actors, Path(tmp)) for size in (args.small, args.large)}
    for size, r in results.items():
        print(f"{size:>7} seeds: {r['requests']:>8} requests in {r['wall']:7.1f} s = "
              f"{r['requests'] / r['wall']:8.0f} req/s end to end; driver peak RSS {r['rss_mb']:.0f} MB; "
              f"seeds per actor {sorted(r['per_actor'].values())}")
    small, large = results[args.small], results[args.large]
    print(f"driver peak RSS ratio {args.large}/{args.small} seeds: {large['rss_mb'] / small['rss_mb']:.2f}x "
          f"(target <= 1.5x)")


if __name__ == "__main__":
    main()
