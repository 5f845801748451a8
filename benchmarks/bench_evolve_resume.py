"""What a resume costs: a rerun after a kill at about half way vs an uninterrupted run.

    python benchmarks/bench_evolve_resume.py [--seeds 52000] [--rounds 4] [--latency-ms 2]

The echo backend with a small simulated latency per request stands in for an engine. One
uninterrupted run, then a run that is SIGKILLed (driver and its whole local Ray) once half of
the buckets are written, then the rerun that resumes it. Prints the three times, checks that
the resumed output has the same record count and that the rerun evolved only the seeds of
unwritten buckets, then rerun/full last (target <= 0.6x).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = 256


def write_seeds(path: Path, count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"id": f"s{i}", "instruction": f"Explain topic number {i} to a student.",
                                  "output": f"Topic {i} is explained here."}) + "\n")


def start(seeds: Path, out: Path, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobs.evolve", "--config", "configs/local.yaml", f"seeds.path={seeds}",
           "seeds.limit=null", f"evolve.rounds={args.rounds}", "generation.backend=echo",
           f"generation.echo_latency_ms={args.latency_ms}", "generation.max_chains=1024",
           "generation.concurrency=[2,2]", "generation.num_cpus=0.5", "seeds.dedupe_partitions=16",
           f"output.buckets={BUCKETS}", f"output.path={out}", "output.overwrite=false"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def timed_run(seeds: Path, out: Path, args) -> float:
    began = time.time()
    proc = start(seeds, out, args)
    if proc.wait() != 0:
        sys.exit(f"run into {out} failed")
    return time.time() - began


def killed_half_way(seeds: Path, out: Path, args) -> float:
    began = time.time()
    proc = start(seeds, out, args)
    while len(list((out / "records").glob("bucket-*.parquet"))) < BUCKETS // 2:
        if proc.poll() is not None:
            sys.exit("the run ended before half of its buckets were written; use more seeds")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    return time.time() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=52000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        write_seeds(seeds, args.seeds)
        full = timed_run(seeds, Path(tmp) / "full", args)
        killed = killed_half_way(seeds, Path(tmp) / "resumed", args)
        written = len(list((Path(tmp) / "resumed" / "records").glob("bucket-*.parquet")))
        rerun = timed_run(seeds, Path(tmp) / "resumed", args)
        summaries = [json.loads((Path(tmp) / name / "summary.json").read_text()) for name in ("full", "resumed")]
    counts = [s["candidates"] for s in summaries]
    assert counts[0] == counts[1] == args.seeds * args.rounds, counts
    redone = sum(summaries[1]["seeds_per_actor"].values())  # seeds the rerun evolved
    assert redone < args.seeds, "the rerun evolved every seed again: it did not resume"
    print(f"full run {full:.1f} s; killed after {killed:.1f} s with {written}/{BUCKETS} buckets written; "
          f"rerun {rerun:.1f} s evolving {redone} of {args.seeds} seeds; {counts[1]} candidates in both")
    print(f"resume rerun / full run: {rerun / full:.2f}x (target <= 0.6x)")


if __name__ == "__main__":
    main()
