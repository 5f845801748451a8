"""`--estimate`: the cost of an evolve config from the seeds' token counts and the rounds, no model called."""
from __future__ import annotations

import json

import pytest

from common.config import load_config
from evol.config import EvolveConfig, EvolveSettings
from evol.estimate import Overheads, Traffic, estimate_chains, estimate_evolve, price
from evol.operations import OPERATIONS
from generation.config import GenerationConfig, SamplingConfig
from jobs.evolve import main

SETTINGS = EvolveSettings(rounds=2, operations=("deepening", "in_breadth"), rounds_ahead=0, fallback_rewrites=False,
                          evolve_sampling=SamplingConfig(max_tokens=10), respond_sampling=SamplingConfig(max_tokens=20),
                          judge_sampling=SamplingConfig(max_tokens=16))
# the longest of the configured operations' templates counts (add_constraints is not configured)
WRITER = Overheads(evolve={op: 100 for op in OPERATIONS} | {"in_breadth": 120, "add_constraints": 999},
                   equality=0, turn=5)
JUDGE = Overheads(evolve={op: 0 for op in OPERATIONS}, equality=50, turn=0)


def test_a_chain_is_bounded_by_max_tokens_and_a_kept_rewrite_as_the_next_parent():
    est = estimate_chains([(8, True), (30, False)], WRITER, JUDGE, SETTINGS)
    # seed 1 (8 tokens, no answer in the file): its answer, then per round rewrite, answer, check;
    # the parent of round 2 is the 10-token rewrite. Seed 2 (30 tokens, answered): rounds only.
    writer = [(5 + 8, 20), (120 + 8, 10), (5 + 10, 20), (120 + 10, 10), (5 + 10, 20),
              (120 + 30, 10), (5 + 10, 20), (120 + 30, 10), (5 + 10, 20)]
    judge = [(50 + 8 + 10, 16), (50 + 10 + 10, 16), (50 + 30 + 10, 16), (50 + 30 + 10, 16)]
    for role, calls in (("writer", writer), ("judge", judge)):
        assert vars(est.traffic[role]) == {"requests": len(calls), "prompt_tokens": sum(p for p, _ in calls),
                                           "generated_tokens": sum(g for _, g in calls)}
    assert est.seeds == 2 and est.min_requests == (1 + 2) + 2  # every evolution eliminated by its text checks


def test_the_bound_holds_the_rounds_started_ahead_and_cancelled_and_the_fallback_rewrites():
    """With evolve.rounds_ahead (default 1) a candidate whose check eliminates it cancels the rounds
    started after it: a run of 4 rounds whose every candidate was judged equal sent 21 requests a seed
    against an estimated maximum of 12."""
    settings = SETTINGS.model_copy(update={"rounds": 4, "rounds_ahead": 1})
    est = estimate_chains([(30, False)], WRITER, JUDGE, settings)
    assert sum(t.requests for t in est.traffic.values()) == 3 * (2 + 2 + 2 + 1)
    with_fallbacks = estimate_chains([(30, False)], WRITER, JUDGE, settings.model_copy(update={"fallback_rewrites": True}))
    assert sum(t.requests for t in with_fallbacks.traffic.values()) == 21 + 3  # one rewrite a round but the last
    endpoint = estimate_chains([(30, False)], WRITER, JUDGE, settings.model_copy(update={"fallback_rewrites": True}),
                               fallbacks=False)
    assert sum(t.requests for t in endpoint.traffic.values()) == 21
    assert est.min_requests == 4


@pytest.mark.parametrize("gen, cost, expected", [
    (GenerationConfig(backend="openai", model="m"),
     {"price_per_million_input_tokens": 0.5, "price_per_million_output_tokens": 2.0},
     {"accelerator_hours": None, "money": (2_000_000 * 0.5 + 500_000 * 2.0) / 1e6}),
    (GenerationConfig(backend="openai", model="m"), {"price_per_accelerator_hour": 3.0},
     {"accelerator_hours": None, "money": None}),  # an endpoint is not billed per accelerator-hour
    (GenerationConfig(backend="vllm", num_gpus=2, vllm={"tensor_parallel_size": 2}),
     {"engine_tokens_per_second": 250.0, "price_per_accelerator_hour": 3.0},
     {"accelerator_hours": 500_000 / 250 / 3600 * 2, "money": 500_000 / 250 / 3600 * 2 * 3.0}),
    (GenerationConfig(backend="hf"), {"price_per_accelerator_hour": 3.0}, {"accelerator_hours": None, "money": None}),
])
def test_money_is_token_prices_for_an_endpoint_and_accelerator_hours_for_our_own_engines(gen, cost, expected):
    cfg = load_config(EvolveConfig, None, [f"cost.{key}={value}" for key, value in cost.items()])
    assert price(Traffic(10, 2_000_000, 500_000), gen, cfg.cost) == pytest.approx(expected)


def test_the_estimate_flag_counts_the_seed_file_and_calls_no_model(tmp_path, capsys):
    rows = [{"id": "a", "instruction": "Name three rivers of Europe."},
            {"id": "b", "instruction": "List the inner planets.", "output": "Mercury, Venus, Earth, Mars"},
            {"id": "long", "instruction": "word " * 400},  # 500 characters = 125 tokens > 100: quarantined
            {"id": "a", "instruction": "A duplicate id."}]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(row) + "\n" for row in rows))
    overrides = [f"seeds.path={seeds}", "seeds.limit=null", "seeds.max_instruction_tokens=100", "evolve.rounds=3",
                 "generation.backend=openai", "generation.model=m", "generation.openai.base_url=http://127.0.0.1:9/v1",
                 "generation.openai.api_key_env=EVOLRAY_NO_SUCH_KEY",  # a request would fail: no server, no key
                 "cost.price_per_million_input_tokens=1", "cost.price_per_million_output_tokens=2"]
    assert main(["--config", "configs/tiny.yaml", "--estimate", *overrides]) == 0
    printed = capsys.readouterr().out
    summary = estimate_evolve(load_config(EvolveConfig, "configs/tiny.yaml", overrides))
    assert summary["seeds"] == 2 and summary["quarantined"] == 2
    # an endpoint: no fallback rewrites; rounds_ahead 1 may start (and cancel) round k+1 whole in rounds 1 and 2
    assert summary["requests"] == {"min": 1 + 3 * 2, "max": 1 + 3 * (2 + 2 + 1) * 2}
    # tiny.yaml: rewrites 16, answers 12, verdicts 16 tokens at most
    assert summary["generated_tokens"] == 12 + (2 + 2 + 1) * 2 * (16 + 12 + 16)
    assert summary["money"] == pytest.approx((summary["prompt_tokens"] + 2 * summary["generated_tokens"]) / 1e6)
    assert "requests: 7 to 31" in printed and f"money, at most: {summary['money']:.4f}" in printed
    assert not (tmp_path / "outputs").exists()

