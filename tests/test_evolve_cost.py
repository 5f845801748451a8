"""Cost accounting of the evolve summary: hand-made records with known totals, without Ray."""
import numpy as np
import pytest

from common.config import ConfigError, load_config
from evol.config import EvolveConfig
from evol.records import ELIMINATED, ERROR, KEPT, QUARANTINED
from evol.resume import config_changes
from evol.summary import (SUMMARY_COLUMNS, SummaryBuilder, accelerators_per_engine, cost_summary, format_cost,
                          format_summary, reserved_accelerator_seconds)
from generation.config import GenerationConfig
from tests.config_files import yamls_for


def _row(round_: int, status: str, gen_seconds: float | None) -> dict:
    row = {name: None for name in SUMMARY_COLUMNS}
    return row | {"round": round_, "op": "seed" if round_ == 0 else "deepening", "status": status,
                  "reason": None if status == KEPT else "some_reason", "gen_seconds": gen_seconds,
                  "requests": 1 if gen_seconds else 0}


# round 0: two seeds answered (0.5 + 0.25 s), one quarantined; round 1: 1.0 + 2.0 kept, 0.5 eliminated;
# round 2: 1.5 kept, 0.25 an error. Total 6.0 s for 3 kept evolutions.
ROWS = [_row(0, KEPT, 0.5), _row(0, KEPT, 0.25), _row(0, QUARANTINED, None),
        _row(1, KEPT, 1.0), _row(1, KEPT, 2.0), _row(1, ELIMINATED, 0.5),
        _row(2, KEPT, 1.5), _row(2, ERROR, 0.25)]


def _builder(rows=ROWS) -> SummaryBuilder:
    builder = SummaryBuilder()
    builder.add_rows(rows)
    return builder


def test_accelerator_seconds_per_round_and_per_kept_instruction_add_up():
    cost = _builder().cost(per_engine=1.0, reserved=20.0, price=3.6)
    assert cost == {
        "accelerator_seconds": 6.0, "reserved_accelerator_seconds": 20.0, "per_kept_instruction": 2.0,
        "price_per_accelerator_hour": 3.6, "money": 0.006,
        "per_round": [{"round": 0, "accelerator_seconds": 0.75, "kept": 2, "per_kept": 0.375},
                      {"round": 1, "accelerator_seconds": 3.5, "kept": 2, "per_kept": 1.75},
                      {"round": 2, "accelerator_seconds": 1.75, "kept": 1, "per_kept": 1.75}]}
    assert sum(r["accelerator_seconds"] for r in cost["per_round"]) == cost["accelerator_seconds"]


def test_an_engine_on_two_gpus_costs_twice_its_busy_time_and_no_price_gives_no_money():
    cost = _builder().cost(per_engine=2.0)
    assert cost["accelerator_seconds"] == 12.0 and cost["per_kept_instruction"] == 4.0
    assert [r["accelerator_seconds"] for r in cost["per_round"]] == [1.5, 7.0, 3.5]
    assert cost["price_per_accelerator_hour"] is None and cost["money"] is None
    assert cost["reserved_accelerator_seconds"] is None


def test_numpy_batches_with_nan_seconds_cost_the_same_as_rows():
    batch = {name: np.array([np.nan if row[name] is None and name == "gen_seconds" else row[name] for row in ROWS],
                            dtype=object) for name in SUMMARY_COLUMNS}
    builder = SummaryBuilder()
    builder.add_batch(batch)
    assert builder.cost(1.0, 20.0, 3.6) == _builder().cost(1.0, 20.0, 3.6)


def test_no_kept_evolution_leaves_per_kept_empty_not_zero_or_infinite():
    cost = cost_summary({0: 1.0, 1: 2.0}, {0: 1, 1: 0})
    assert cost["accelerator_seconds"] == 3.0 and cost["per_kept_instruction"] is None
    assert cost["per_round"][1] == {"round": 1, "accelerator_seconds": 2.0, "kept": 0, "per_kept": None}


@pytest.mark.parametrize("gen, actors_seen, expected", [
    (GenerationConfig(backend="hf", concurrency=(1, 1)), 1, 100.0),  # CPU: one engine per actor
    (GenerationConfig(backend="vllm", num_gpus=1, concurrency=(1, 8)), 3, 300.0),
    (GenerationConfig(backend="vllm", num_gpus=2, vllm={"tensor_parallel_size": 2}, concurrency=(1, 8)), 3, 600.0),
    (GenerationConfig(backend="vllm", num_gpus=1, concurrency=(2, 8)), 0, 200.0),  # nothing to do: the min pool
    (GenerationConfig(backend="vllm", num_gpus=1, concurrency=(1, 8)), 12, 800.0),  # restarted actors: at most max
    (GenerationConfig(backend="hf", num_gpus=0.5, device="cuda", concurrency=(2, 2)), 2, 100.0),  # two share a GPU
    (GenerationConfig(backend="openai", concurrency=(1, 4)), 4, None),  # the pool holds no accelerator
])
def test_what_the_pool_held_is_wall_time_x_actors_x_accelerators(gen, actors_seen, expected):
    assert reserved_accelerator_seconds(gen, 100.0, actors_seen) == expected


def test_accelerators_per_engine_are_its_gpus_or_one_on_cpu():
    assert accelerators_per_engine(GenerationConfig()) == 1.0
    assert accelerators_per_engine(GenerationConfig(backend="vllm", num_gpus=4, vllm={"tensor_parallel_size": 4})) == 4


def test_the_printed_summary_has_one_cost_line():
    summary = _builder().build(wall_seconds=10.0) | {"cost": _builder().cost(1.0, 20.0, 3.6)}
    lines = [line for line in format_summary(summary).splitlines() if line.startswith("cost:")]
    assert lines == ["cost: 6.0 accelerator-s of engine time, 2.000 per kept instruction; the pool held at most "
                     "20.0 accelerator-s this run; money 0.0060 at 3.6 per accelerator-hour"]
    assert format_cost(cost_summary({0: 0.0}, {0: 1})) == (
        "cost: 0.0 accelerator-s of engine time, - per kept instruction; no price (cost.price_per_accelerator_hour)")
    assert "cost:" not in format_summary(_builder().build(wall_seconds=10.0))  # summaries of older runs


def test_the_price_is_a_config_key_that_a_rerun_may_change():
    assert EvolveConfig().cost.price_per_accelerator_hour is None
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", ["cost.price_per_accelerator_hour=2.5"])
    assert cfg.cost.price_per_accelerator_hour == 2.5
    with pytest.raises(ConfigError, match="cost.price_per_accelerator_hour"):
        load_config(EvolveConfig, "configs/tiny.yaml", ["cost.price_per_accelerator_hour=-1"])
    saved = EvolveConfig().model_dump(mode="json")
    older = {key: value for key, value in saved.items() if key != "cost"}  # a run from before the key existed
    priced = cfg.model_dump(mode="json")
    assert config_changes(older, EvolveConfig().model_dump(mode="json")) == []
    assert config_changes(saved, saved | {"cost": {"price_per_accelerator_hour": 2.5}}) == []
    assert "evolve.rounds" in config_changes(saved, priced)  # tiny.yaml's own keys still count


def test_every_evolve_preset_states_its_price_and_the_cluster_one_gives_an_example():
    for path in yamls_for("evolve"):
        cfg = load_config(EvolveConfig, path)
        assert cfg.cost.price_per_accelerator_hour is None or cfg.cost.price_per_accelerator_hour > 0
    assert load_config(EvolveConfig, "configs/evolve_cluster.yaml").cost.price_per_accelerator_hour > 0
