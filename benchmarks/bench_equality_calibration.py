"""What contextual calibration (evolve.equality_calibration=content_free) does to a small judge's verdicts.

    python benchmarks/bench_equality_calibration.py [--model smollm2-135m-instruct]

Scores "Equal" vs "Not Equal" (hf, fp32, log-probabilities) on 14 pairs built from the bundled seeds:
4 copies, 2 upper-cased copies, 4 rewrites that add a requirement, 4 unrelated pairs; prints the
judge's lean on the content-free pairs, then per pair the raw and the calibrated margin
(log P(Equal) - log P(Not Equal); > 0 is Equal) and the verdict counts of both.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from evol import elimination as rules
from evol.config import EvolveSettings
from evol.rounds import EqualityLean, signed_margin
from evol.templates import equality_prompt
from generation import GenerationConfig, SamplingParams, build_generator

SEEDS = Path(__file__).resolve().parents[1] / "evol" / "data" / "self_instruct_seeds.jsonl"


def pairs() -> list[tuple[str, str, str]]:
    seeds = [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines()[:12]]
    return ([("copy", s, s) for s in seeds[:4]] + [("upper-cased", s, s.upper()) for s in seeds[4:6]]
            + [("rewrite", s, s + " Explain your reasoning step by step and give an example.") for s in seeds[6:10]]
            + [("unrelated", seeds[i], seeds[i + 1]) for i in range(0, 8, 2)])


async def measure(judge) -> tuple[float, list[float]]:
    greedy = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16)
    lean = await EqualityLean._measure(judge, EvolveSettings().judge_sampling)
    margins = [signed_margin(await judge.choose(equality_prompt(a, b), list(rules.EQUALITY_OPTIONS), greedy))
               for _, a, b in pairs()]
    return lean, margins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    judge = build_generator(GenerationConfig(model=args.model, dtype="float32", torch_threads=2))
    lean, margins = asyncio.run(measure(judge))
    print(f"lean on content-free pairs: {lean:.3f} nats toward Equal")
    print(f"{'pair':<12} {'raw':>7} {'calibrated':>10}")
    for (kind, _, _), margin in zip(pairs(), margins):
        print(f"{kind:<12} {margin:>7.3f} {margin - lean:>10.3f}")
    print(f"Equal verdicts: raw {sum(m > 0 for m in margins)}/{len(margins)}, "
          f"calibrated {sum(m - lean > 0 for m in margins)}/{len(margins)}")


if __name__ == "__main__":
    main()
