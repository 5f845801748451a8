"""A budget for an evolve output folder (cost.max_money, cost.max_tokens), all runs together.

Work is taken a bucket of seeds at a time (a bucket is written whole or not at all, which keeps
resume exact). Before an actor starts a bucket it asks the job's budget keeper (one small named
Ray actor the driver starts): the bucket is admitted while the money and tokens spent so far, plus
the projected cost of the buckets in flight and of this one, stay within the budget. Refused buckets
are not written; the job writes everything admitted, says how much is left, and a rerun with a
higher budget does only the refused buckets. The projection per seed is the mean cost of the seeds
finished so far (this run and earlier ones), or, before any is, the estimate's upper bound for a
seed of seeds.max_instruction_tokens (evol/estimate.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from evol.config import CostConfig, EvolveConfig
from evol.summary import _number  # None and NaN count as zero

SPEND_COLUMNS = ["round", "prompt_tokens", "generated_tokens", "gen_seconds"]


@dataclass(frozen=True)
class Spend:
    tokens: float = 0.0
    money: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.tokens + other.tokens, self.money + other.money)

    def times(self, factor: float) -> Spend:
        return Spend(self.tokens * factor, self.money * factor)


def records_spend(rows: list[dict], cost: CostConfig, per_engine: float) -> tuple[Spend, int]:
    """What the requests of these records cost, and the seeds among them (round-0 records). Money:
    token prices x tokens + accelerator-hour price x engine time (the summary's accelerator-seconds)."""
    prompt = sum(_number(r["prompt_tokens"]) for r in rows)
    generated = sum(_number(r["generated_tokens"]) for r in rows)
    seconds = sum(_number(r["gen_seconds"]) for r in rows) * per_engine
    money = (prompt * (cost.price_per_million_input_tokens or 0) + generated * (cost.price_per_million_output_tokens
                                                                                 or 0)) / 1e6
    money += seconds / 3600 * (cost.price_per_accelerator_hour or 0)
    return Spend(prompt + generated, money), sum(r["round"] == 0 for r in rows)


class BudgetState:
    """The keeper's books (pure): spent and seeds finished, reservations of the buckets in flight."""

    def __init__(self, cost: CostConfig, spent: Spend, seeds_done: int, bound_per_seed: Spend):
        self.limits = Spend(cost.max_tokens or float("inf"), cost.max_money or float("inf"))
        self.spent, self.seeds_done, self.bound = spent, seeds_done, bound_per_seed
        self.in_flight: dict[int, Spend] = {}
        self.refused: dict[int, int] = {}  # bucket -> its seed rows

    def per_seed(self) -> Spend:
        return self.spent.times(1 / self.seeds_done) if self.seeds_done else self.bound

    def admit(self, bucket: int, seeds: int, unwritten_rows: int | None = None) -> bool:
        """A bucket starts if the projection stays within the budget, or if nothing is in flight and
        the budget is not spent (a pessimistic first projection must not stop the job for nothing).
        `unwritten_rows`: the bucket's seed rows that have no record yet (a bucket an earlier run wrote
        holds its round-0 records even when its error chains are refused); `seeds` by default."""
        guess = self.per_seed().times(seeds)
        projected = sum(self.in_flight.values(), self.spent) + guess
        fits = projected.tokens <= self.limits.tokens and projected.money <= self.limits.money
        unspent = self.spent.tokens < self.limits.tokens and self.spent.money < self.limits.money
        if fits or (not self.in_flight and unspent):
            self.in_flight[bucket] = guess
            return True
        self.refused[bucket] = seeds if unwritten_rows is None else unwritten_rows
        return False

    def settle(self, bucket: int, spend: Spend, seeds: int) -> None:
        self.in_flight.pop(bucket, None)
        self.spent += spend
        self.seeds_done += seeds

    def outcome(self) -> dict:
        return {"refused_buckets": sorted(self.refused), "refused_rows": sum(self.refused.values()),
                "spent_tokens": int(self.spent.tokens), "spent_money": round(self.spent.money, 6),
                "max_tokens": None if self.limits.tokens == float("inf") else int(self.limits.tokens),
                "max_money": None if self.limits.money == float("inf") else self.limits.money}


def bound_per_seed(cfg: EvolveConfig) -> Spend:
    """The estimate's upper bound for one seed of seeds.max_instruction_tokens that needs an answer,
    templates counted as characters / 4 (no tokenizer on the driver needed)."""
    from evol.estimate import estimate_chains, price, role_overheads

    overheads = role_overheads(cfg.generation, None)
    est = estimate_chains([(cfg.seeds.max_instruction_tokens, True)], overheads, overheads, cfg.evolve,
                          fallbacks=cfg.generation.backend != "openai")
    gens = {"writer": cfg.generation, "judge": cfg.judge or cfg.generation}
    tokens = sum(t.prompt_tokens + t.generated_tokens for t in est.traffic.values())
    money = 0.0
    for role, gen in gens.items():
        priced = price(est.traffic[role], gen, cfg.cost)["money"]
        if priced is None and gen.backend != "openai" and cfg.cost.price_per_accelerator_hour is not None:
            # an engine of our own is paid by the hour, and its hours are unknown ahead without
            # cost.engine_tokens_per_second: the first bucket runs alone, and what it cost projects the rest
            priced = float("inf")
        money += priced or 0.0
    return Spend(tokens, money)


# Ray glue: the keeper is a named actor of the job, owned by the driver; actors find it by name.

def has_budget(cost: CostConfig) -> bool:
    return cost.max_money is not None or cost.max_tokens is not None


def keeper_name(cfg: EvolveConfig) -> str:
    return "evolray-budget-" + hashlib.blake2b(cfg.output.path.encode(), digest_size=8).hexdigest()


def spent_so_far(cfg: EvolveConfig, records_dir: str) -> tuple[Spend, int]:
    """What the bucket files already written (earlier runs) cost, and their seeds: a bucket at a time."""
    import pyarrow.parquet as pq

    from common import storage
    from evol.output import record_files
    from evol.summary import accelerators_per_engine

    spent, seeds = Spend(), 0
    for path in record_files(records_dir):
        filesys, inner = storage.filesystem(path)
        rows = pq.read_table(inner, filesystem=filesys, columns=SPEND_COLUMNS).to_pylist()
        spend, n = records_spend(rows, cfg.cost, accelerators_per_engine(cfg.generation))
        spent, seeds = spent + spend, seeds + n
    return spent, seeds


def start_budget(ray, cfg: EvolveConfig, records_dir: str):
    """On the driver before the pool starts: the keeper, or None without a budget."""
    if not has_budget(cfg.cost):
        return None
    spent, seeds = spent_so_far(cfg, records_dir)
    keeper = ray.remote(num_cpus=0)(BudgetState).options(name=keeper_name(cfg))
    return keeper.remote(cfg.cost, spent, seeds, bound_per_seed(cfg))


def refused_buckets(ray, keeper) -> frozenset[int]:
    """The buckets the budget did not start so far (none without a budget)."""
    return frozenset() if keeper is None else frozenset(ray.get(keeper.outcome.remote())["refused_buckets"])


def budget_outcome(ray, keeper) -> dict | None:
    """The keeper's books at the end of the run; the keeper is stopped (a rerun starts its own)."""
    if keeper is None:
        return None
    outcome = ray.get(keeper.outcome.remote())
    ray.kill(keeper)
    return outcome


class BucketBudget:
    """The actor's side: ask before a bucket starts, report what it cost when it is written."""

    def __init__(self, cfg: EvolveConfig):
        from evol.summary import accelerators_per_engine

        self.cost, self.per_engine = cfg.cost, accelerators_per_engine(cfg.generation)
        self.keeper = None
        if has_budget(cfg.cost):
            import ray

            self.keeper = ray.get_actor(keeper_name(cfg))

    async def admit(self, bucket: int, seeds: int, unwritten_rows: int) -> bool:
        return True if self.keeper is None else await self.keeper.admit.remote(bucket, seeds, unwritten_rows)

    def settle(self, bucket: int, records: list[dict]) -> None:
        if self.keeper is not None:
            spend, seeds = records_spend(records, self.cost, self.per_engine)
            self.keeper.settle.remote(bucket, spend, seeds)


def format_budget(outcome: dict) -> str:
    limits = ", ".join(f"cost.{key} {outcome[key]:,}" for key in ("max_money", "max_tokens") if outcome[key])
    money = "" if outcome["max_money"] is None else f", money {outcome['spent_money']:.4f}"
    spent = f"spent so far (all runs): {outcome['spent_tokens']:,} tokens{money}"
    if not outcome["refused_buckets"]:
        return f"budget ({limits}): every bucket fitted; {spent}"
    return (f"budget reached ({limits}): {len(outcome['refused_buckets'])} bucket(s) with "
            f"{outcome['refused_rows']} seed rows were not started and are not in this output; {spent}. "
            "Rerun with a higher budget to evolve them (finished buckets are kept).")
