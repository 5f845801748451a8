"""Does the evolve job keep an engine busy? Its generated tokens/s vs the bare engine on the same prompts.

    python benchmarks/bench_engine_saturation.py [--seeds 16] [--rounds 2] [--backends hf,vllm]

For each backend, one model load: (1) the job's chains (evol.rounds.evolve_rows, the code the
EvolveActor runs) on the bundled seeds; (2) the exact prompts those chains sent, rebuilt from
their records, given to the bare engine with nothing depending on anything: all at once for
vLLM, sorted batches of `batch_size` for hf (its best static batching). Same sampling, same
lengths. Prints job/bare per backend, then the job's vllm/hf ratio last.
"""
from __future__ import annotations

import argparse
import asyncio
import time

from bench_generation_common import (bundled_seed_rows, by_sampling, generated_tokens, job_chains, prompts_of,
                                     settings)
from generation import GenerationConfig, build_generator


async def bare_vllm(generator, prompts) -> tuple[int, float]:
    start = time.perf_counter()
    gens = await asyncio.gather(*(generator.generate(p, params)
                                  for params, group in by_sampling(prompts).items() for p in group))
    return sum(g.completion_tokens for g in gens), time.perf_counter() - start


async def bare_hf(generator, prompts) -> tuple[int, float]:
    engine, tokens = generator.inner, 0
    start = time.perf_counter()
    for params, group in by_sampling(prompts).items():
        group = sorted(group, key=len)
        for i in range(0, len(group), engine.cfg.batch_size):
            tokens += sum(g.completion_tokens for g in engine._generate_batch(
                [engine.prompt_ids(p) for p in group[i:i + engine.cfg.batch_size]],
                [params] * len(group[i:i + engine.cfg.batch_size])))
    return tokens, time.perf_counter() - start


async def measure(backend: str, args) -> float:
    cfg = GenerationConfig(backend=backend, batch_size=args.batch_size, torch_threads=args.threads,
                           vllm={"enforce_eager": True, "max_model_len": 2048})
    generator = build_generator(cfg)
    evolve = settings(args.rounds, args.evolve_tokens, args.respond_tokens)
    records, job_seconds = await job_chains(generator, bundled_seed_rows(args.seeds), evolve)
    job_rate = generated_tokens(records) / job_seconds
    prompts = prompts_of(records, evolve)
    tokens, bare_seconds = await (bare_vllm if backend == "vllm" else bare_hf)(generator, prompts)
    bare_rate = tokens / bare_seconds
    await generator.close()
    print(f"{backend}: {len(prompts)} requests; job {generated_tokens(records)} tok in {job_seconds:.1f} s "
          f"= {job_rate:.1f} tok/s; bare engine {tokens} tok in {bare_seconds:.1f} s = {bare_rate:.1f} tok/s; "
          f"job/bare = {job_rate / bare_rate:.2f}x", flush=True)
    return job_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--evolve-tokens", type=int, default=96)
    parser.add_argument("--respond-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="hf,vllm")
    args = parser.parse_args()
    rates = {backend: asyncio.run(measure(backend, args)) for backend in args.backends.split(",")}
    if {"hf", "vllm"} <= set(rates):
        print(f"vllm/hf through the job: {rates['vllm'] / rates['hf']:.2f}x")


if __name__ == "__main__":
    main()
