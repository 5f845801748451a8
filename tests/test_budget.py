"""The evolve budget (cost.max_money / cost.max_tokens): the keeper's books without Ray, then the job
stopping at its budget and a rerun with a higher one finishing the rest."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from common.config import load_config
from evol.budget import BudgetState, Spend, format_budget, records_spend
from evol.config import CostConfig, EvolveConfig


def _state(bound: float, spent: Spend | None = None, seeds_done: int = 0, **limits) -> BudgetState:
    return BudgetState(CostConfig(**limits), spent or Spend(), seeds_done, Spend(bound))


def test_buckets_start_while_spent_plus_projected_buckets_in_flight_fit_the_budget():
    state = _state(bound=300.0, max_tokens=1000)
    assert state.admit(0, 2)  # 600 projected from the bound
    assert not state.admit(1, 2)  # 600 + 600 > 1000
    state.settle(0, Spend(200.0), 2)  # 100 tokens a seed, measured: the projection now uses it
    assert state.admit(2, 3)  # 200 + 300
    assert state.admit(3, 5)  # 200 + 300 + 500 = 1000: still within
    assert not state.admit(4, 1)
    assert state.outcome() == {"refused_buckets": [1, 4], "refused_rows": 3, "spent_tokens": 200, "spent_money": 0.0,
                               "max_tokens": 1000, "max_money": None}


def test_a_pessimistic_first_projection_does_not_stop_the_job_but_a_spent_budget_does():
    assert _state(bound=5000.0, max_tokens=1000).admit(0, 1)  # nothing in flight, nothing spent
    earlier_runs = _state(bound=1.0, spent=Spend(90.0, 0.5), seeds_done=10, max_money=0.5,
                          price_per_accelerator_hour=1.0)
    assert not earlier_runs.admit(0, 1)


def test_a_money_budget_on_an_engine_of_our_own_runs_one_bucket_until_a_bucket_has_cost_something():
    """Without cost.engine_tokens_per_second an engine's hours cannot be projected: the bound's money
    was 0, and every bucket asked for before the first one settled was admitted, whatever the budget."""
    from common.config import load_config
    from evol.budget import bound_per_seed
    from evol.config import EvolveConfig

    cfg = load_config(EvolveConfig, "configs/tiny.yaml", ["generation.backend=echo", "cost.max_money=0.01",
                                                          "cost.price_per_accelerator_hour=3"])
    bound = bound_per_seed(cfg)
    assert bound.money == float("inf")
    state = BudgetState(cfg.cost, Spend(), 0, bound)
    assert [state.admit(b, 4) for b in range(3)] == [True, False, False]
    state.settle(0, Spend(100, 0.001), 4)
    assert state.admit(3, 4) and state.per_seed() == Spend(25, 0.00025)
    priced = load_config(EvolveConfig, "configs/tiny.yaml", ["generation.backend=echo", "cost.max_money=0.01",
                                                             "cost.price_per_accelerator_hour=3",
                                                             "cost.engine_tokens_per_second=100"])
    assert 0 < bound_per_seed(priced).money < float("inf")


def test_money_of_records_is_token_prices_plus_engine_time_at_the_accelerator_price():
    rows = [{"round": 0, "prompt_tokens": 1_000, "generated_tokens": 500, "gen_seconds": 1800.0},
            {"round": 1, "prompt_tokens": 2_000, "generated_tokens": None, "gen_seconds": float("nan")}]
    cost = CostConfig(price_per_million_input_tokens=2.0, price_per_million_output_tokens=10.0,
                      price_per_accelerator_hour=4.0)
    spend, seeds = records_spend(rows, cost, per_engine=2.0)
    assert seeds == 1 and spend.tokens == 3_500
    assert spend.money == pytest.approx(3_000 * 2.0 / 1e6 + 500 * 10.0 / 1e6 + 1800 * 2.0 / 3600 * 4.0)


def _bucket_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (folder / "records").glob("bucket-*.parquet")}


def test_evolve_stops_at_its_token_budget_and_a_rerun_with_a_higher_one_does_only_the_rest(tmp_path, local_ray,
                                                                                           capfd):
    from evol.run import run_evolve

    seeds = str(tmp_path / "seeds.jsonl")
    with open("evol/data/self_instruct_seeds.jsonl") as src, open(seeds, "w") as dst:
        dst.writelines(src.readlines()[:16])
    base = [f"seeds.path={seeds}", "seeds.limit=null", f"output.path={tmp_path / 'out'}", "generation.backend=echo",
            "output.buckets=8", "generation.max_chains=1"]
    first = run_evolve(load_config(EvolveConfig, "configs/tiny.yaml", [*base, "cost.max_tokens=3000"]))
    budget, written = first["budget"], _bucket_bytes(tmp_path / "out")
    records = pq.read_table(tmp_path / "out" / "records").to_pylist()
    assert budget["refused_buckets"] and len(written) + len(budget["refused_buckets"]) == 8
    assert budget["spent_tokens"] == sum(r["prompt_tokens"] + r["generated_tokens"] for r in records if r["requests"])
    per_bucket = sorted(sum(r["prompt_tokens"] + r["generated_tokens"] for r in pq.read_table(path).to_pylist()
                            if r["requests"]) for path in (tmp_path / "out" / "records").glob("bucket-*.parquet"))
    # Past the budget by at most the buckets in flight when it was crossed (2 calls on the one actor).
    assert 1500 < budget["spent_tokens"] <= 3000 + sum(per_bucket[-2:])
    assert first["accounting"]["ok"] and first["errors"] == 0 and first["seeds"]["errors"] == 0
    assert first["seeds"]["read"] + budget["refused_rows"] == 16  # nothing recorded as failed
    assert format_budget(budget) in capfd.readouterr().out

    second = run_evolve(load_config(EvolveConfig, "configs/tiny.yaml", [*base, "cost.max_tokens=1000000"]))
    assert second["budget"]["refused_buckets"] == [] and second["seeds"]["read"] == 16
    assert second["accounting"]["ok"] and len(_bucket_bytes(tmp_path / "out")) == 8
    assert all(_bucket_bytes(tmp_path / "out")[name] == data for name, data in written.items())  # kept, not redone
    records = pq.read_table(tmp_path / "out" / "records").to_pylist()
    assert second["budget"]["spent_tokens"] == sum(r["prompt_tokens"] + r["generated_tokens"]
                                                   for r in records if r["requests"])
