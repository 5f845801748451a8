"""The hf backend through the asynchronous chains vs the synchronous step-by-step path it replaced.

    python benchmarks/bench_hf_async_vs_sync.py [--seeds 16] [--rounds 4]

Same model load, same seeds and sampling (the embedded default's: configs/local.yaml). The old
path ran a batch of seeds in lockstep, 1 + 3M blocking steps (answer; per round evolve, respond,
equality check), each step a sorted, batched generate() that waited for its slowest request and
shrank as candidates were eliminated. It is rebuilt here from the same pure functions and today's
rules, so both paths send the same kinds of requests. Runs old, new, new, old in one process (the
order does not favour either) and prints new/old generated tokens/s over both runs last. With the embedded default's sampling (T=1) the two
paths write different texts (a different number of eliminations and of tokens before EOS), so
tokens/s also measures luck; `--greedy` makes the work (nearly) the same.
"""
from __future__ import annotations

import argparse
import asyncio
import time

from bench_generation_common import bundled_seed_rows, generated_tokens, job_chains
from common.config import load_config
from evol import elimination as rules
from evol.config import EvolveConfig
from evol.operations import choose_operation
from evol.templates import equality_prompt, evolve_prompt, user_turn
from generation import SamplingParams, build_generator
from generation.hf import Row


def batched(engine, prompts: list[str], sampling) -> list:
    """The old Generator.generate(list): sorted by length, batches of batch_size, answers in order."""
    params, order = SamplingParams.from_config(sampling), sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    for start in range(0, len(order), engine.cfg.batch_size):
        chunk = order[start:start + engine.cfg.batch_size]
        ids = [Row(engine.prompt_ids(prompts[i]), len(prompts[i])) for i in chunk]
        for i, gen in zip(chunk, engine._generate_batch(ids, [params] * len(chunk))):
            out[i] = gen
    return out


def lockstep(engine, rows: list[dict], cfg) -> tuple[int, float]:
    """1 + 3M synchronous steps over the whole batch of seeds, with today's rules (the same
    requests as the chains: only seeds without a response are answered, cut rewrites eliminated)."""
    start = time.perf_counter()
    pool = [(row["seed_id"], user_turn(row["instruction"], row["input"])) for row in rows]
    unanswered = [text for (_, text), row in zip(pool, rows) if not row["response"]]
    tokens = sum(g.completion_tokens for g in batched(engine, unanswered, cfg.respond_sampling))
    for round_index in range(1, cfg.rounds + 1):
        ops = [choose_operation(cfg.seed, item_id, round_index, cfg.operations) for item_id, _ in pool]
        gens = batched(engine, [evolve_prompt(op, text) for op, (_, text) in zip(ops, pool)], cfg.evolve_sampling)
        tokens += sum(g.completion_tokens for g in gens)
        texts = [rules.clean_evolved_instruction(g.text) for g in gens]
        alive = [i for i, (text, g) in enumerate(zip(texts, gens))
                 if rules.reason_before_response(pool[i][1], text, truncated=not g.finished) is None]
        answers = batched(engine, [texts[i] for i in alive], cfg.respond_sampling)
        tokens += sum(g.completion_tokens for g in answers)
        alive = [i for i, g in zip(alive, answers) if rules.reason_after_response(g.text) is None]
        verdicts = batched(engine, [equality_prompt(pool[i][1], texts[i]) for i in alive], cfg.judge_sampling)
        tokens += sum(g.completion_tokens for g in verdicts)
        for i, verdict in zip(alive, verdicts):
            if rules.reason_after_equality(rules.parse_equality_generation(verdict.text, verdict.finished)) is None:
                pool[i] = (f"{pool[i][0]}/{round_index}", texts[i])
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--greedy", action="store_true", help="temperature 0 for rewrites and answers too: "
                        "both paths then write (nearly) the same texts, so they do the same work")
    args = parser.parse_args()
    greedy = ["evolve.evolve_sampling.temperature=0", "evolve.respond_sampling.temperature=0"] if args.greedy else []
    # one engine on both cores, the shape this was measured in (the preset runs one 1-thread engine per core)
    cfg = load_config(EvolveConfig, "configs/local.yaml", [f"evolve.rounds={args.rounds}", "generation.torch_threads=2",
                                                           *greedy])
    generator = build_generator(cfg.generation)
    rows = bundled_seed_rows(args.seeds)
    totals = {"old": [0, 0.0], "new": [0, 0.0]}

    async def measure() -> None:
        loop = asyncio.get_running_loop()
        for path in ("old", "new", "new", "old"):  # ABBA: whichever runs second in a process is not favoured
            if path == "old":  # on the backend's own generate thread, as the new path runs generate()
                tokens, seconds = await loop.run_in_executor(generator.inner._worker, lockstep, generator.inner,
                                                             rows, cfg.evolve)
            else:
                records, seconds = await job_chains(generator, rows, cfg.evolve)
                tokens = generated_tokens(records)
            totals[path][0] += tokens
            totals[path][1] += seconds
            print(f"{path}: {tokens} tok in {seconds:.1f} s = {tokens / seconds:.1f} tok/s", flush=True)

    asyncio.run(measure())
    (old_tokens, old_seconds), (new_tokens, new_seconds) = totals["old"], totals["new"]
    old_rate, new_rate = old_tokens / old_seconds, new_tokens / new_seconds
    print(f"synchronous steps, 2 runs: {old_tokens} tok in {old_seconds:.1f} s = {old_rate:.1f} tok/s")
    print(f"asynchronous chains, 2 runs: {new_tokens} tok in {new_seconds:.1f} s = {new_rate:.1f} tok/s")
    print(f"same seeds and rounds, wall time: old {old_seconds:.1f} s, new {new_seconds:.1f} s")
    print(f"new/old tokens/s: {new_rate / old_rate:.2f}x")


if __name__ == "__main__":
    main()
