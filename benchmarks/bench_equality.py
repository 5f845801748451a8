"""The equality check (rule 1): the constrained answer vs free-text generation of the verdict.

    python benchmarks/bench_equality.py [--pairs 32] [--backend hf] [--dtype auto]

The same pairs (a bundled seed and a rewrite of it) go to one generator, all at once, the way the
evolve job's chains send them: `choose` (both answers scored by their log-probabilities, no decoding
loop) and `generate` with the job's judge sampling (greedy, 16 tokens) read by the strict parser.
Runs text, constrained, constrained, text in one process (the first call also warms the engine up)
and prints requests/s of each, the share of verdicts each got, and the ratio constrained / text last.
The inner generator call is measured, not the whole job (label: a shortcut to the check itself).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from common.models import SMALL_MODEL_ALIAS
from evol import elimination as rules
from evol.config import EvolveSettings
from evol.templates import equality_prompt
from generation import GenerationConfig, SamplingParams, build_generator

SEEDS = Path(__file__).resolve().parents[1] / "evol" / "data" / "self_instruct_seeds.jsonl"


def pairs(count: int) -> list[str]:
    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()[:count]]
    return [equality_prompt(r["instruction"], r["instruction"].rstrip(".") + ", and give two examples.") for r in rows]


async def constrained(generator, prompts: list[str]) -> list[str]:
    choices = await asyncio.gather(*(generator.choose(p, list(rules.EQUALITY_OPTIONS), SAMPLING) for p in prompts))
    return [rules.equality_verdict(c.option, c.text, c.finished) for c in choices]


async def text(generator, prompts: list[str]) -> list[str]:
    gens = await asyncio.gather(*(generator.generate(p, SAMPLING) for p in prompts))
    return [rules.parse_equality_generation(g.text, g.finished) for g in gens]


SAMPLING = SamplingParams.from_config(EvolveSettings().judge_sampling)


def timed(name: str, fn, generator, prompts: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    verdicts = asyncio.run(fn(generator, prompts))
    rate = len(prompts) / (time.perf_counter() - start)
    decided = sum(v != rules.UNPARSED for v in verdicts) / len(verdicts)
    print(f"{name:<12} {rate:8.2f} req/s  verdicts {decided:.0%}  {dict((v, verdicts.count(v)) for v in set(verdicts))}")
    return rate, decided


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    extra = {"vllm": {"enforce_eager": True, "max_model_len": 2048}} if args.backend == "vllm" else {}
    generator = build_generator(GenerationConfig(backend=args.backend, model=SMALL_MODEL_ALIAS, dtype=args.dtype,
                                                 **extra))
    prompts = pairs(args.pairs)
    runs = [timed(name, fn, generator, prompts) for name, fn in
            [("text", text), ("constrained", constrained), ("constrained", constrained), ("text", text)]]
    text_rate = (runs[0][0] + runs[3][0]) / 2
    constrained_rate = (runs[1][0] + runs[2][0]) / 2
    print(f"constrained / text requests/s: {constrained_rate / text_rate:.2f}x")


if __name__ == "__main__":
    main()
