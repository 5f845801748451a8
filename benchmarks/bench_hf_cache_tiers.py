"""hf's cache tiers (`generation.cache_tiers`) through the evolve job: one KV cache as wide as the
running batch's longest row, against rows in caches of their own widths. The job as a user runs it
(`configs/local.yaml`, the pool of 1-thread actors), the two settings alternated.

    python benchmarks/bench_hf_cache_tiers.py [--seeds 96] [--rounds 2] [--repeats 2] [--greedy] [--tiers 1,2]
    python benchmarks/bench_hf_cache_tiers.py --engine [--rows 30] [--long 730] [--steps 25] [--repeats 2]

A few bundled seeds carry a long input (a table, a paragraph), so their rewrite prompts are several
times longer than the rest; with one cache, every row of a decode step attends over such a row's
columns. Prints each run's kept tokens over the slowest actor's chain span (as bench_engine_shapes.py),
then each setting's tokens/s over the first's, per pair and over the means. At T=1 the runs write
different texts; `--greedy` (rewrites and answers at temperature 0) gives them nearly the same work
(a greedy row's text depends on its batch only through bf16 rounding).

`--engine`: the decode step alone, no job: the small model in bf16 on one thread (an actor's), a running
batch of `--rows` rows of 120-300 prompt tokens of which 0, 1 and 3 are replaced by a `--long`-token
prompt, in one cache and in two tiers, alternated; milliseconds per decode step and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_engine_shapes import evolve_speed


def engine_steps(args) -> None:
    import random
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from common.models import ensure_small_model
    from generation import attention
    from generation.continuous import Live, TieredBatch
    from generation.types import SamplingParams

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(ensure_small_model()), dtype=torch.bfloat16,
                                                 attn_implementation=attention.register()).eval()
    sampling = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=10 ** 6)
    draw = random.Random(0)
    short = [draw.randrange(120, 300) for _ in range(args.rows)]

    def step_ms(lengths: list[int], tiers: int) -> tuple[float, list]:
        batch = TieredBatch(model, set(), 0, "cpu", tiers=tiers)
        rngs = [random.Random(i) for i in range(len(lengths))]
        batch.admit([Live(i, [rng.randrange(100, 40000) for _ in range(n)], sampling, rng)
                     for i, (n, rng) in enumerate(zip(lengths, rngs))])
        for _ in range(3):
            batch.step()
        start = time.perf_counter()
        for _ in range(args.steps):
            batch.step()
        return 1000 * (time.perf_counter() - start) / args.steps, [(len(t), t.width) for t in batch.tiers]

    for long_rows in (0, 1, 3):
        lengths = short[:args.rows - long_rows] + [args.long] * long_rows
        ms: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for tiers in (1, 2):
                took, shapes = step_ms(lengths, tiers)
                ms[tiers].append(took)
                print(f"{args.rows - long_rows} short + {long_rows} of {args.long} tokens, cache_tiers={tiers}: "
                      f"{took:.1f} ms a step (tiers as rows, width: {shapes})", flush=True)
        print(f"  {long_rows} long: two tiers' step over one cache's, over the means: "
              f"{statistics.mean(ms[2]):.1f} / {statistics.mean(ms[1]):.1f} ms = "
              f"{statistics.mean(ms[2]) / statistics.mean(ms[1]):.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", action="store_true", help="time decode steps of the bare engine, no job")
    parser.add_argument("--rows", type=int, default=30, help="--engine: rows in the batch")
    parser.add_argument("--long", type=int, default=730, help="--engine: the long rows' prompt tokens")
    parser.add_argument("--steps", type=int, default=25, help="--engine: decode steps timed per batch")
    parser.add_argument("--seeds", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiers", default="1,2", help="generation.cache_tiers values, alternated; the first is the baseline")
    parser.add_argument("--greedy", action="store_true", help="rewrites and answers at temperature 0: the same work")
    parser.add_argument("--override", action="append", default=[], help="one more job override, every run")
    args = parser.parse_args()
    if args.engine:
        return engine_steps(args)
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
