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
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench_generation_common import by_sampling, engine_shape, longest_sequence, prompts_of, split_by_chain
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
            f"evolve.respond_sampling.max_tokens={args.respond_tokens}", *engine_shape(backend, args.threads),
            "generation.vllm.enforce_eager=true", "generation.vllm.max_model_len=2048", f"output.path={out}",
            "output.overwrite=true", *caching, *args.override]


def run_job(backend: str, args, out: Path) -> tuple[dict, list[dict], float]:
    return run_evolve(overrides(backend, args, out), out, backend)


def run_module(job: str, config: str, job_overrides: list[str], label: str) -> float:
    """`python -m jobs.<job> --config <config> <overrides>` as a user runs it: its wall seconds (stops
    the benchmark with the job's error if it fails)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--config", config, *job_overrides],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the {label} job failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def run_evolve(job_overrides: list[str], out: Path, label: str) -> tuple[dict, list[dict], float]:
    """The job through Ray, as a user runs it (`configs/local.yaml` and these overrides, writing to
    `out`): its summary, its records and its wall seconds."""
    wall = run_module("evolve", "configs/local.yaml", job_overrides, label)
    records = [row for f in sorted((out / "records").glob("bucket-*.parquet")) for row in pq.read_table(f).to_pylist()]
    return json.loads((out / "summary.json").read_text()), records, wall


def split_checks(cfg: EvolveConfig, prompts) -> tuple[list, list[str]]:
    """The prompts to generate, and the equality checks (`equality_check: constrained`: scored, as the job did)."""
    if cfg.evolve.equality_check != "constrained":
        return prompts, []
    return ([(p, sampling) for p, sampling in prompts if sampling != cfg.evolve.judge_sampling],
            [p for p, sampling in prompts if sampling == cfg.evolve.judge_sampling])


async def timed_way(generator, run, prompts, checks, judging) -> tuple[int, float, int, float | None]:
    """(tokens, seconds, decode steps, on-core share) of one way of giving the engine its work: steps
    and the share of its computing time the worker thread held a core are hf's (else 0 and None)."""
    engine, counters = generator.inner, ("batches", "worker_seconds", "worker_cpu_seconds")
    before = [getattr(engine, key, 0) for key in counters]
    tokens, seconds = await run(generator, prompts, checks, judging)
    steps, computing, on_core = (getattr(engine, key, 0) - was for key, was in zip(counters, before))
    # this way's share; the engine's own on_cpu_share (over all ways) says whether it means anything here
    on_core = on_core / computing if computing and getattr(engine, "on_cpu_share", None) is not None else None
    return tokens, seconds, steps, on_core


async def bare(backend: str, args, out: Path, prompts, engine: list[str] = (),
               rows: int | None = None) -> dict[str, tuple[int, float, int, float | None]]:
    """{way: (tokens, seconds, decode steps, on-core share)} of one bare engine on the job's prompts, each
    way it can batch them; `engine`: overrides of its shape (threads); with `rows`, hf all at once but
    never more than that many rows decoding."""
    cfg = load_config(EvolveConfig, str(ROOT / "configs" / "local.yaml"),
                      overrides(backend, args, out) + list(engine) + ([f"generation.batch_size={rows}"] if rows else []))
    generator = build_generator(cfg.generation)
    prompts, checks = split_checks(cfg, prompts)
    judging = SamplingParams.from_config(cfg.evolve.judge_sampling)
    ways = {"all at once": all_at_once}
    if backend == "hf" and rows is None:
        ways["sorted static batches"] = sorted_static_batches
    results = {way: await timed_way(generator, run, prompts, checks, judging) for way, run in ways.items()}
    await generator.close()
    return results


async def _one_of_several(backend: str, args, out: Path, prompts, start) -> tuple[int, float, float, int, float | None]:
    cfg = load_config(EvolveConfig, str(ROOT / "configs" / "local.yaml"), overrides(backend, args, out))
    generator = build_generator(cfg.generation)
    prompts, checks = split_checks(cfg, prompts)
    await asyncio.to_thread(start.wait)  # every engine loaded: they start together
    began = time.monotonic()
    tokens, _, steps, on_core = await timed_way(generator, all_at_once, prompts, checks,
                                                SamplingParams.from_config(cfg.evolve.judge_sampling))
    ended = time.monotonic()
    await generator.close()
    return tokens, began, ended, steps, on_core


def _engine_process(backend, args, out, prompts, start, results) -> None:
    results.put(asyncio.run(_one_of_several(backend, args, out, prompts, start)))


def several_engines(backend: str, args, out: Path, shares: list[list]) -> tuple[int, float, int, float | None]:
    """The job's pool without Ray: one bare engine per actor, each in its own process with the actor's
    settings, given one share of whole chains' prompts, all at once, the engines started together.
    (tokens, seconds from the first start to the last end, the most decode steps of one, mean on-core share)."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(len(shares) + 1), context.Queue()
    workers = [context.Process(target=_engine_process, args=(backend, args, out, share, start, results))
               for share in shares]
    for worker in workers:
        worker.start()
    start.wait()
    done = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    shares_on_core = [d[4] for d in done if d[4] is not None]
    return (sum(d[0] for d in done), max(d[2] for d in done) - min(d[1] for d in done), max(d[3] for d in done),
            sum(shares_on_core) / len(shares_on_core) if shares_on_core else None)


def measure(backend: str, args, workdir: Path) -> float:
    out = workdir / backend
    summary, records, wall = run_job(backend, args, out)
    actors = list(summary["actors"].values())
    cfg = load_config(EvolveConfig, str(ROOT / "configs" / "local.yaml"), overrides(backend, args, out))
    engines, threads = len(actors), cfg.generation.torch_threads or 1
    # Tokens of rounds started ahead and then cancelled are spent, but not work the bare engine is given (it
    # runs the records' prompts): the job is credited only with the tokens its records kept. Its span: the
    # longest actor's chains (a pool of several waits for them all before the first bucket: they start together).
    useful = summary["generated_tokens"] - sum(a.get("unused_tokens", 0) for a in actors)
    span = max(a["chain_seconds"] for a in actors)
    job_rate = useful / span
    prompts = prompts_of(records, cfg.evolve)
    # The bare side: one engine on all of the job's cores; with a pool of several, also one engine per actor
    # (the actor's settings, each in its own process, one share of the chains each). The job is compared
    # with the fastest, whichever it is.
    one_engine = [f"generation.torch_threads={engines * threads}"] if backend == "hf" and engines > 1 else []
    ways = asyncio.run(bare(backend, args, out, prompts, one_engine))
    like_the_job = f"{engines} engines of {threads} thread(s), all at once" if engines > 1 else "all at once"
    if engines > 1:
        shares = [prompts_of(share, cfg.evolve) for share in split_by_chain(records, engines)]
        ways[like_the_job] = several_engines(backend, args, out, shares)
    for way, (tokens, seconds, *_) in ways.items():
        print(f"  bare {backend}, {way}{' (one engine of ' + str(engines * threads) + ' threads)' if one_engine and 'engines' not in way else ''}: "
              f"{tokens} tok in {seconds:.1f} s = {tokens / seconds:.1f} tok/s", flush=True)
    peak = sum(a["peak_chains_in_flight"] for a in actors)
    if backend == "hf" and engines == 1 and peak < cfg.generation.batch_size and cfg.evolve.rounds_ahead == 0:
        # A chain decodes one request at a time: the job can never offer its engine more rows than this
        [(tokens, seconds, *_)] = asyncio.run(bare(backend, args, out, prompts, rows=peak)).values()
        print(f"  bare {backend}, all at once, at most {peak} rows (the job's peak chains in flight): {tokens} tok in "
              f"{seconds:.1f} s = {tokens / seconds:.1f} tok/s; job/this = {job_rate / (tokens / seconds):.2f}x",
              flush=True)
    best = max(ways, key=lambda way: ways[way][0] / ways[way][1])  # the job against the bare engine's best
    tokens, seconds, *_ = ways[best]
    continuous = cfg.generation.batching == "continuous"
    rows = [a["mean_batch_rows"] for a in actors if a.get("mean_batch_rows")]
    if rows:
        # Steps of a continuous batch make one token per row: a mean step's seconds (each actor decodes its
        # share of the tokens), then what the longest chain's sequential tokens alone take at that pace
        step = span * (sum(rows) / len(rows)) * engines / summary["generated_tokens"]
        root, sequential = longest_sequence(records, cfg.evolve.evolve_sampling.max_tokens,
                                            cfg.evolve.fallback_rewrites)
        print(f"  longest chain ({root}): {sequential} tokens decode one after another (its rewrites and its last "
              f"answer{'; rewrites of one parent overlap as fallback rewrites run them' if cfg.evolve.fallback_rewrites else ''}); at the job's mean step of {1000 * step:.0f} ms that is {sequential * step:.1f} s of its "
              f"{span:.1f} s of chains, so job/bare <= {seconds / (sequential * step):.2f}x "
              f"at this pace", flush=True)
        # The same chain against the bare engines' own steps (each costs about the same at 20 rows as at 32,
        # so a step is the unit): whatever order the job gave the requests, even knowing every chain's
        # length ahead, its span is at least `sequential` steps, while the bare engine (the busiest of
        # several) took this many
        like = ways[like_the_job]
        bare_tokens, _, bare_steps, _ = like
        if bare_steps and continuous:
            job_steps = summary["generated_tokens"] / engines / (sum(rows) / len(rows))
            print(f"  any order of the job's requests, at the bare engine's own pace: the bare engine took {bare_steps} "
                  f"decode steps (all at once{', the busiest of ' + str(engines) if engines > 1 else ''}) and the "
                  f"longest chain needs {sequential}, so job/bare <= {bare_steps / sequential * useful / bare_tokens:.2f}x; "
                  f"the job took {job_steps:.0f} ({'per actor, ' if engines > 1 else ''}{job_steps / bare_steps:.2f}x the "
                  f"bare engine's: the job's own loss, before any step costs more)", flush=True)
        on_core = [a["engine_on_cpu_share"] for a in actors if a.get("engine_on_cpu_share") is not None]
        if on_core and like[3] is not None:
            # The same work computes slower when the engine's thread waits for a core: on a small machine
            # Ray's other processes (driver, GCS, raylet, Ray Data's actors) take some, and the bare engine
            # runs with Ray gone. Equal work, unequal cores: that part of the gap is the machine, not the job.
            print(f"  the engine's worker thread held a core {100 * sum(on_core) / len(on_core):.1f}% of its computing "
                  f"time in the job{' (mean of its actors)' if engines > 1 else ''}, {100 * like[3]:.1f}% in the bare "
                  f"engine{'s' if engines > 1 else ''} (all at once)", flush=True)
    print(f"{backend} ({args.seeds} seeds, {args.rounds} rounds, {engines} actor(s) of {threads} thread(s), max_chains "
          f"{cfg.generation.chains_in_flight()} per actor, prefix caching {args.prefix_caching}, rounds ahead "
          f"{cfg.evolve.rounds_ahead}): {len(prompts)} requests; job {useful} tok kept of {summary['generated_tokens']} "
          f"generated in {span:.1f} s of chains = {job_rate:.1f} tok/s (wall {wall:.0f} s, "
          f"{sum(a['mean_chains_in_flight'] for a in actors):.1f} chains in flight, engine busy "
          f"{100 * min(a['engine_busy_share'] for a in actors):.0f}%"
          + (f", {sum(rows) / len(rows):.1f} rows per batch" if rows else "")
          + "".join(f", {label} {100 * sum(v) / len(v):.0f}%" for label, v in (
              ("model computing", [a["engine_computing_share"] for a in actors if a.get("engine_computing_share") is not None]),
              ("prompt tokens from the prefix cache", [a["prefix_cached_share"] for a in actors if a.get("prefix_cached_share") is not None])) if v)
          + f"); bare engine at its best ({best}) {tokens} tok in {seconds:.1f} s = "
          f"{tokens / seconds:.1f} tok/s; job/bare = {job_rate / (tokens / seconds):.2f}x", flush=True)
    return job_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--evolve-tokens", type=int, default=96)
    parser.add_argument("--respond-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="hf: one actor of this many threads instead of the preset's pool (one 1-thread actor per core)")
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
