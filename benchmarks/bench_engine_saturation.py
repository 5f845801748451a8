"""Does the evolve job keep an engine busy? Its generated tokens/s vs the bare engine on the same prompts.

    python benchmarks/bench_engine_saturation.py [--seeds 96] [--rounds 2] [--backends hf,vllm]
        [--evolve-tokens 96] [--respond-tokens 128] [--prefix-caching default|on|off]

For each backend, in one run: (1) the job as a user runs it, `python -m jobs.evolve --config
configs/local.yaml` (Ray Data, the actor pool, buckets, writes), on the bundled seeds, every seed
answered in round 0; (2) the exact prompts the job sent, rebuilt from its records, given to the bare
engine with the same engine settings and nothing depending on anything: all at once for vLLM; for hf
both all at once through its continuous batching and in length-sorted static batches of `batch_size`
(its best static batching), and the job is compared with the faster of the two. Same sampling, same
lengths; the equality checks as the job ran them (with `equality_check: constrained`, both options
scored, no tokens). With `evolve.rounds_ahead=0` and fewer chains than hf's `batch_size`, it also
prints the bare engine all at once with at most that many rows: such a chain decodes one request at a
time, so that is the most the job's chains could ever give the engine (the ratio's ceiling for so few
seeds, not its target).

The job's rate is the tokens its records kept (its generated tokens less those of rounds started ahead
and cancelled, which the bare engine is not given) over its chain seconds (the actor's
first chain start to its last chain end: the part of the job an engine can be kept busy in); its wall
time (Ray start, reading, model load) is printed beside it. Prints job/bare per backend, and the job's mean chains in flight.
For hf it also prints the bound the chains' order sets: the longest chain's tokens that must decode one after
another, at the job's mean step, against the job's span (with few seeds, that chain is the job's span);
and the same chain against the bare engine's own decode steps: the most any order of the job's requests
could reach at the bare engine's pace, even knowing every chain's length ahead.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench_generation_common import by_sampling, longest_sequence, prompts_of
from common.config import load_config
from evol.config import EvolveConfig
from evol.elimination import EQUALITY_OPTIONS
from generation import build_generator
from generation.hf import Row
from generation.types import SamplingParams

ROOT = Path(__file__).resolve().parents[1]


async def judge_all(generator, checks: list[str], sampling: SamplingParams) -> None:
    """The constrained equality checks the job ran (a forward pass scoring both options, no tokens
    generated), all at once: the engine batches them as it does in the job."""
    await asyncio.gather(*(generator.choose(p, list(EQUALITY_OPTIONS), sampling) for p in checks))


async def all_at_once(generator, prompts, checks, judging) -> tuple[int, float]:
    start = time.perf_counter()
    gens, _ = await asyncio.gather(
        asyncio.gather(*(generator.generate(p, params) for params, group in by_sampling(prompts).items() for p in group)),
        judge_all(generator, checks, judging))
    return sum(g.completion_tokens for g in gens), time.perf_counter() - start


async def sorted_static_batches(generator, prompts, checks, judging) -> tuple[int, float]:
    engine, tokens = generator.inner, 0
    start = time.perf_counter()
    await judge_all(generator, checks, judging)
    for params, group in by_sampling(prompts).items():
        group = sorted(group, key=len)
        for i in range(0, len(group), engine.cfg.batch_size):
            tokens += sum(g.completion_tokens for g in engine._generate_batch(
                [Row(engine.prompt_ids(p), len(p)) for p in group[i:i + engine.cfg.batch_size]],
                [params] * len(group[i:i + engine.cfg.batch_size])))
    return tokens, time.perf_counter() - start


def overrides(backend: str, args, out: Path) -> list[str]:
    # vLLM's own switch; hf's prefix cache (generation.prefix_cache_tokens) is on by default, off with "off"
    caching = [] if args.prefix_caching == "default" else [
        f"generation.vllm.enable_prefix_caching={str(args.prefix_caching == 'on').lower()}"]
    if args.prefix_caching == "off":
        caching.append("generation.prefix_cache_tokens=0")
    return [f"generation.backend={backend}", f"seeds.limit={args.seeds}", f"evolve.rounds={args.rounds}",
            "seeds.response_field=null", f"evolve.evolve_sampling.max_tokens={args.evolve_tokens}",
            f"evolve.respond_sampling.max_tokens={args.respond_tokens}", f"generation.torch_threads={args.threads}",
            "generation.vllm.enforce_eager=true", "generation.vllm.max_model_len=2048", f"output.path={out}",
            "output.overwrite=true", *caching, *args.override]


def run_job(backend: str, args, out: Path) -> tuple[dict, list[dict], float]:
    """The job through Ray, as a user runs it: its summary, its records and its wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/local.yaml",
                           *overrides(backend, args, out)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the {backend} job failed:\n{proc.stderr[-3000:]}")
    records = [row for f in sorted((out / "records").glob("bucket-*.parquet")) for row in pq.read_table(f).to_pylist()]
    return json.loads((out / "summary.json").read_text()), records, wall


async def bare(backend: str, args, out: Path, prompts,
               rows: int | None = None) -> dict[str, tuple[int, float, int, float | None]]:
    """{way: (tokens, seconds, decode steps, on-core share)} of the bare engine on the job's prompts, each
    way it can batch them (steps and the share of its computing time the worker thread held a core: hf's,
    else 0 and None); with `rows`, hf all at once but never more than that many rows decoding."""
    cfg = load_config(EvolveConfig, str(ROOT / "configs" / "local.yaml"),
                      overrides(backend, args, out) + ([f"generation.batch_size={rows}"] if rows else []))
    generator = build_generator(cfg.generation)
    checks = []
    if cfg.evolve.equality_check == "constrained":  # the job scored its checks: so does the bare engine
        checks = [p for p, sampling in prompts if sampling == cfg.evolve.judge_sampling]
        prompts = [(p, sampling) for p, sampling in prompts if sampling != cfg.evolve.judge_sampling]
    judging = SamplingParams.from_config(cfg.evolve.judge_sampling)
    ways = {"all at once": all_at_once}
    if backend == "hf" and rows is None:
        ways["sorted static batches"] = sorted_static_batches
    results = {}
    engine, counters = generator.inner, ("batches", "worker_seconds", "worker_cpu_seconds")
    for way, run in ways.items():
        before = [getattr(engine, key, 0) for key in counters]
        tokens, seconds = await run(generator, prompts, checks, judging)
        steps, computing, on_core = (getattr(engine, key, 0) - was for key, was in zip(counters, before))
        # this way's share; the engine's own on_cpu_share (over all ways) says whether it means anything here
        on_core = on_core / computing if computing and getattr(engine, "on_cpu_share", None) is not None else None
        results[way] = tokens, seconds, steps, on_core
    await generator.close()
    return results


def measure(backend: str, args, workdir: Path) -> float:
    out = workdir / backend
    summary, records, wall = run_job(backend, args, out)
    [gauges] = summary["actors"].values()
    # Tokens of rounds started ahead and then cancelled are spent, but not work the bare engine is given (it
    # runs the records' prompts): the job is credited only with the tokens its records kept.
    useful = summary["generated_tokens"] - gauges.get("unused_tokens", 0)
    job_rate = useful / gauges["chain_seconds"]
    cfg = load_config(EvolveConfig, str(ROOT / "configs" / "local.yaml"), overrides(backend, args, out))
    prompts = prompts_of(records, cfg.evolve)
    ways = asyncio.run(bare(backend, args, out, prompts))
    for way, (tokens, seconds, *_) in ways.items():
        print(f"  bare {backend}, {way}: {tokens} tok in {seconds:.1f} s = {tokens / seconds:.1f} tok/s", flush=True)
    peak = gauges["peak_chains_in_flight"]
    if backend == "hf" and peak < cfg.generation.batch_size and cfg.evolve.rounds_ahead == 0:
        # A chain decodes one request at a time: the job can never offer its engine more rows than this
        [(tokens, seconds, *_)] = asyncio.run(bare(backend, args, out, prompts, rows=peak)).values()
        print(f"  bare {backend}, all at once, at most {peak} rows (the job's peak chains in flight): {tokens} tok in "
              f"{seconds:.1f} s = {tokens / seconds:.1f} tok/s; job/this = {job_rate / (tokens / seconds):.2f}x",
              flush=True)
    tokens, seconds, *_ = max(ways.values(), key=lambda ts: ts[0] / ts[1])  # the job against the bare engine's best
    continuous = cfg.generation.batching == "continuous"
    if gauges.get("mean_batch_rows"):
        # Steps of a continuous batch make one token per row: a mean step's seconds, then what the
        # longest chain's sequential tokens alone take at that pace (the job's span cannot be shorter)
        step = gauges["chain_seconds"] * gauges["mean_batch_rows"] / summary["generated_tokens"]
        root, sequential = longest_sequence(records, cfg.evolve.evolve_sampling.max_tokens,
                                            cfg.evolve.fallback_rewrites)
        print(f"  longest chain ({root}): {sequential} tokens decode one after another (its rewrites and its last "
              f"answer{'; rewrites of one parent overlap as fallback rewrites run them' if cfg.evolve.fallback_rewrites else ''}); at the job's mean step of {1000 * step:.0f} ms that is {sequential * step:.1f} s of its "
              f"{gauges['chain_seconds']:.1f} s of chains, so job/bare <= {seconds / (sequential * step):.2f}x "
              f"at this pace", flush=True)
        # The same chain against the bare engine's own steps (each costs about the same at 20 rows as at 32,
        # so a step is the unit): whatever order the job gave the requests, even knowing every chain's
        # length ahead, its span is at least `sequential` steps, while the bare engine took this many
        bare_tokens, _, bare_steps, _ = ways["all at once"]
        if bare_steps and continuous:
            job_steps = summary["generated_tokens"] / gauges["mean_batch_rows"]
            print(f"  any order of the job's requests, at the bare engine's own pace: the bare engine took {bare_steps} "
                  f"decode steps (all at once) and the longest chain needs {sequential}, so job/bare <= "
                  f"{bare_steps / sequential * useful / bare_tokens:.2f}x; the job took {job_steps:.0f} "
                  f"({job_steps / bare_steps:.2f}x the bare engine's: the job's own loss, before any step costs more)",
                  flush=True)
    job_on_core, bare_on_core = gauges.get("engine_on_cpu_share"), ways["all at once"][3]
    if job_on_core is not None and bare_on_core is not None:
        # The same work computes slower when the engine's thread waits for a core: on a small machine
        # Ray's other processes (driver, GCS, raylet, Ray Data's actors) take some, and the bare engine
        # runs with Ray gone. Equal work, unequal cores: that part of the gap is the machine, not the job.
        print(f"  the engine's worker thread held a core {100 * job_on_core:.1f}% of its computing time in the job, "
              f"{100 * bare_on_core:.1f}% in the bare engine (all at once)", flush=True)
    print(f"{backend} ({args.seeds} seeds, {args.rounds} rounds, max_chains {cfg.generation.chains_in_flight()}, "
          f"prefix caching {args.prefix_caching}, rounds ahead {cfg.evolve.rounds_ahead}): {len(prompts)} requests; job "
          f"{useful} tok kept of {summary['generated_tokens']} generated in "
          f"{gauges['chain_seconds']:.1f} s of chains = {job_rate:.1f} tok/s (wall {wall:.0f} s, "
          f"{gauges['mean_chains_in_flight']:.1f} chains in flight, engine busy "
          f"{100 * gauges['engine_busy_share']:.0f}%"
          + (f", {gauges['mean_batch_rows']:.1f} rows per batch" if gauges.get("mean_batch_rows") else "")
          + (f", model computing {100 * gauges['engine_computing_share']:.0f}%"
             if gauges.get("engine_computing_share") is not None else "")
          + (f", {100 * gauges['prefix_cached_share']:.0f}% of prompt tokens from the prefix cache"
             if gauges.get("prefix_cached_share") is not None else "")
          + f"); bare engine at its best {tokens} tok in {seconds:.1f} s = "
          f"{tokens / seconds:.1f} tok/s; job/bare = {job_rate / (tokens / seconds):.2f}x", flush=True)
    return job_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--evolve-tokens", type=int, default=96)
    parser.add_argument("--respond-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--prefix-caching", choices=["default", "on", "off"], default="default")
    parser.add_argument("--override", action="append", default=[], help="one more job override (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rates = {backend: measure(backend, args, Path(tmp)) for backend in args.backends.split(",")}
    if {"hf", "vllm"} <= set(rates):
        print(f"vllm/hf through the job: {rates['vllm'] / rates['hf']:.2f}x")


if __name__ == "__main__":
    main()
