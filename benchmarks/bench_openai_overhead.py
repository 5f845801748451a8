"""What the openai backend costs over calling the endpoint directly.

    python benchmarks/bench_openai_overhead.py [--requests 48] [--in-flight 16] [--max-tokens 48]

Starts vLLM's own OpenAI-compatible server on CPU with the small model, then sends the same
prompts (greedy, so both sides generate the same tokens) twice each way: through
generation.openai_api.OpenAIGenerator (max_in_flight = N) and through a bare `AsyncOpenAI`
client with an asyncio.Semaphore(N). Prints both, then backend/direct requests/s last.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_generation_common import bundled_seed_rows  # noqa: E402
from common.models import ensure_small_model  # noqa: E402
from generation import GenerationConfig, SamplingParams, build_generator  # noqa: E402
from tests.servers import vllm_openai_server  # noqa: E402

KEY = "bench-key"


async def through_backend(url: str, prompts: list[str], in_flight: int, max_tokens: int) -> float:
    os.environ["EVOLRAY_BENCH_KEY"] = KEY
    cfg = GenerationConfig(backend="openai", model="smollm2",
                           openai={"base_url": url, "api_key_env": "EVOLRAY_BENCH_KEY", "max_in_flight": in_flight})
    generator = build_generator(cfg)
    start = time.perf_counter()
    await asyncio.gather(*(generator.generate(p, SamplingParams(0.0, 1.0, max_tokens)) for p in prompts))
    seconds = time.perf_counter() - start
    await generator.close()
    return seconds


async def direct(url: str, prompts: list[str], in_flight: int, max_tokens: int) -> float:
    from openai import AsyncOpenAI

    client, slots = AsyncOpenAI(base_url=url, api_key=KEY), asyncio.Semaphore(in_flight)

    async def one(prompt: str):
        async with slots:
            return await client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}],
                                                        temperature=0.0, top_p=1.0, max_tokens=max_tokens)

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    seconds = time.perf_counter() - start
    await client.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    prompts = [row["instruction"] for row in bundled_seed_rows(args.requests)]
    log = Path(tempfile.mkdtemp()) / "server.log"
    with vllm_openai_server(str(ensure_small_model()), "smollm2", KEY, log) as url:
        asyncio.run(direct(url, prompts[:4], args.in_flight, 8))  # warm-up
        times = {"direct": [], "backend": []}
        for _ in range(2):  # interleaved, so drift on a noisy machine hits both
            times["direct"].append(asyncio.run(direct(url, prompts, args.in_flight, args.max_tokens)))
            times["backend"].append(asyncio.run(through_backend(url, prompts, args.in_flight, args.max_tokens)))
    rates = {name: len(prompts) / min(seconds) for name, seconds in times.items()}
    for name, rate in rates.items():
        print(f"{name}: {len(prompts)} requests, best of 2 {min(times[name]):.1f} s = {rate:.2f} req/s")
    print(f"openai backend / direct AsyncOpenAI: {rates['backend'] / rates['direct']:.2f}x")


if __name__ == "__main__":
    main()
