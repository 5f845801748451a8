"""The Evol-Instruct round loop for one batch of seeds, with the model injected.

Every seed row gives one round-0 record (kept or quarantined); every pool item gives one
candidate per round (kept or eliminated, with the rule). A failed candidate's parent goes
back to the pool unchanged. Pure apart from `generator`, so it is tested without Ray.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from evol import elimination as rules
from evol.config import EvolveSettings
from evol.operations import choose_operation
from evol.records import ELIMINATED, KEPT, QUARANTINED, SEED_OP, candidate_id, empty_record
from evol.seeds import TOO_MANY_TOKENS
from evol.templates import equality_prompt, evolve_prompt, user_turn
from generation.base import Generation, Generator, SamplingParams
from generation.config import SamplingConfig


@dataclass(frozen=True)
class PoolItem:
    id: str
    root_id: str
    text: str  # the full user turn (instruction + context) that the next round evolves


@dataclass
class Cost:
    """What the model spent on one record, summed over its requests."""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    requests: int = 0
    seconds: float = 0.0

    def add(self, gen: Generation, seconds: float) -> None:
        self.prompt_tokens += gen.prompt_tokens
        self.generated_tokens += gen.completion_tokens
        self.requests += 1
        self.seconds += seconds

    def columns(self) -> dict:
        return dict(prompt_tokens=self.prompt_tokens, generated_tokens=self.generated_tokens,
                    requests=self.requests, gen_seconds=round(self.seconds, 6))


@dataclass
class Candidate:
    parent: PoolItem
    op: str
    text: str
    cost: Cost = field(default_factory=Cost)
    response: str | None = None
    response_tokens: int | None = None
    truncated: bool | None = None
    equality: str = rules.SKIPPED
    equality_answer: str | None = None
    reason: str | None = None


def timed_generate(generator: Generator, prompts: list[str], sampling: SamplingConfig):
    """Generations plus the wall seconds of the call shared out evenly per prompt."""
    if not prompts:
        return [], 0.0
    start = time.perf_counter()
    out = generator.generate(prompts, SamplingParams.from_config(sampling))
    return out, (time.perf_counter() - start) / len(prompts)


def start_pool(seeds: list[dict], generator: Generator, settings: EvolveSettings,
               max_instruction_tokens: int) -> tuple[list[dict], list[PoolItem]]:
    """Round 0: quarantine bad seeds, answer seeds that came without a response."""
    valid = [row for row in seeds if row["error"] is None]
    lengths = dict(zip((row["seed_id"] for row in valid),
                       generator.count_tokens([user_turn(r["instruction"], r["input"]) for r in valid])))
    records, usable = [], []
    for row in seeds:
        if row["error"] is None and lengths[row["seed_id"]] > max_instruction_tokens:
            row = dict(row, error=TOO_MANY_TOKENS,
                       detail=f"{lengths[row['seed_id']]} tokens > limit {max_instruction_tokens}")
        if row["error"] is not None:
            records.append(empty_record(
                id=f"quarantined:{row['source']}:{row['line']}", root_id=row["seed_id"],
                round=0, op=SEED_OP, instruction=row["instruction"], input=row["input"], status=QUARANTINED,
                reason=row["error"], detail=row["detail"], source=row["source"], line=row["line"], raw=row["raw"]))
        else:
            usable.append(row)
    unanswered = [row for row in usable if not row["response"]]
    gens, seconds = timed_generate(generator, [user_turn(r["instruction"], r["input"]) for r in unanswered],
                                   settings.respond_sampling)
    answers = {row["seed_id"]: gen for row, gen in zip(unanswered, gens)}
    answered = [row for row in usable if row["response"]]
    given_lengths = dict(zip((r["seed_id"] for r in answered),
                             generator.count_tokens([r["response"] for r in answered])))
    for row in usable:
        cost, gen = Cost(), answers.get(row["seed_id"])
        if gen is not None:
            cost.add(gen, seconds)
        records.append(empty_record(
            id=row["seed_id"], root_id=row["seed_id"], round=0, op=SEED_OP, instruction=row["instruction"],
            input=row["input"], response=gen.text if gen else row["response"], status=KEPT,
            instruction_tokens=lengths[row["seed_id"]],
            response_tokens=gen.completion_tokens if gen else given_lengths[row["seed_id"]],
            response_truncated=(not gen.finished) if gen else None, model=generator.model_name if gen else None,
            source=row["source"], line=row["line"], **cost.columns()))
    pool = [PoolItem(r["seed_id"], r["seed_id"], user_turn(r["instruction"], r["input"])) for r in usable]
    return records, pool


def evolve_round(pool: list[PoolItem], round_index: int, generator: Generator,
                 settings: EvolveSettings) -> tuple[list[dict], list[PoolItem]]:
    ops = [choose_operation(settings.seed, item.id, round_index, settings.operations) for item in pool]
    gens, seconds = timed_generate(generator, [evolve_prompt(op, item.text) for op, item in zip(ops, pool)],
                                   settings.evolve_sampling)
    candidates = []
    for item, op, gen in zip(pool, ops, gens):
        cand = Candidate(item, op, rules.clean_evolved_instruction(gen.text))
        cand.cost.add(gen, seconds)
        cand.reason = rules.reason_before_response(item.text, cand.text)
        candidates.append(cand)

    alive = [c for c in candidates if c.reason is None]
    gens, seconds = timed_generate(generator, [c.text for c in alive], settings.respond_sampling)
    for cand, gen in zip(alive, gens):
        cand.cost.add(gen, seconds)
        cand.response, cand.response_tokens, cand.truncated = gen.text, gen.completion_tokens, not gen.finished
        cand.reason = rules.reason_after_response(gen.text)

    alive = [c for c in alive if c.reason is None]
    gens, seconds = timed_generate(generator, [equality_prompt(c.parent.text, c.text) for c in alive],
                                   settings.judge_sampling)
    for cand, gen in zip(alive, gens):
        cand.cost.add(gen, seconds)
        cand.equality, cand.equality_answer = rules.parse_equality(gen.text), gen.text
        cand.reason = rules.reason_after_equality(cand.equality)

    lengths = generator.count_tokens([c.text for c in candidates])
    records, next_pool = [], []
    for cand, length in zip(candidates, lengths):
        new_id = candidate_id(cand.parent.id, round_index, cand.op)
        records.append(empty_record(
            id=new_id, root_id=cand.parent.root_id, parent_id=cand.parent.id, round=round_index, op=cand.op,
            instruction=cand.text, input=None, response=cand.response,
            status=KEPT if cand.reason is None else ELIMINATED, reason=cand.reason, equality=cand.equality,
            equality_answer=cand.equality_answer,
            response_truncated=cand.truncated, instruction_tokens=length, response_tokens=cand.response_tokens,
            model=generator.model_name, **cand.cost.columns()))
        next_pool.append(PoolItem(new_id, cand.parent.root_id, cand.text) if cand.reason is None else cand.parent)
    return records, next_pool


def evolve_seed_rows(seeds: list[dict], generator: Generator, settings: EvolveSettings,
                     max_instruction_tokens: int,
                     on_round: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
    """All rounds for one batch of seeds: rows are independent, so a batch never waits for others.

    `on_round(round, records)` is told after each round (progress inside a long batch).
    """
    records, pool = start_pool(seeds, generator, settings, max_instruction_tokens)
    for round_index in range(1, settings.rounds + 1):
        if not pool:  # every seed of this batch was quarantined
            break
        round_records, pool = evolve_round(pool, round_index, generator, settings)
        records.extend(round_records)
        if on_round is not None:
            on_round(round_index, round_records)
    return records
