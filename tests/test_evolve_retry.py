"""A rerun after an endpoint outage: the chains that ended in an error go on from their last finished
round, by default; `evolve.retry_errors=false` keeps them. On the openai backend against a fake
OpenAI-compatible server that answers 503 for a while, then recovers."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from common.config import load_config
from evol.config import EvolveConfig
from evol.output import read_records
from evol.run import run_evolve
from evol.templates import ORIGINAL_MARKER
from tests.evolve_checks import assert_counts_and_lineage
from tests.openai_fakes import FlakyOpenAIServer

SEEDS, ROUNDS, DOWN = 8, 3, ("s1", "s4", "s6")


def _round_two_answers_of_marked_seeds(prompt: str) -> bool:
    """The answer request of a round-2 rewrite (the fake appends "Give two examples." per rewrite)."""
    return ("OUTAGE" in prompt and prompt.count("Give two examples.") == 2 and ORIGINAL_MARKER not in prompt
            and "First instruction:" not in prompt)


@pytest.fixture
def server():
    server = FlakyOpenAIServer()
    server.outage = _round_two_answers_of_marked_seeds
    yield server
    server.close()


def _run(tmp_path, server, *overrides):
    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("".join(json.dumps({"id": f"s{i}", "output": f"Answer {i}.",
                                             "instruction": f"Describe item {i}" + (" OUTAGE" if f"s{i}" in DOWN else "")})
                                 + "\n" for i in range(SEEDS)))
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", [
        f"seeds.path={seeds}", f"output.path={tmp_path / 'out'}", "seeds.limit=null", f"evolve.rounds={ROUNDS}",
        "generation.backend=openai", "generation.model=fake", f"generation.openai.base_url={server.url}",
        "generation.openai.max_retries=0", "output.buckets=4", *overrides])
    summary = run_evolve(cfg)
    return summary, read_records(str(tmp_path / "out" / "records")).to_pandas()


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("id").sort_index()


def test_a_rerun_after_an_outage_retries_the_error_chains_from_their_last_finished_round(tmp_path, server, local_ray):
    summary, first = _run(tmp_path, server)
    errors = first[first["status"] == "error"]
    assert sorted(errors["root_id"]) == list(DOWN) and set(errors["round"]) == {2}
    assert set(errors["reason"]) == {"http_503"}
    server.outage = None  # the endpoint recovered
    summary, second = _run(tmp_path, server)
    assert_counts_and_lineage(second, summary, seeds=SEEDS, rounds=ROUNDS)
    assert summary["errors"] == 0 and (second["status"] != "error").all()
    assert len(second) == SEEDS * (1 + ROUNDS) and summary["accounting"]["ok"]
    finished = _by_id(first[first["status"] != "error"])
    pd.testing.assert_frame_equal(_by_id(second).loc[finished.index], finished)  # finished rounds unchanged
    redone = second[second["root_id"].isin(DOWN) & (second["round"] >= 2)]
    assert len(redone) == len(DOWN) * (ROUNDS - 1)
    # The OUTAGE seeds' rewrites are near-copies of each other: curation may mark all but one duplicate.
    assert redone["status"].isin(["kept", "duplicate"]).all() and (redone["status"] == "kept").any()
    assert summary["seeds_per_actor"] and sum(summary["seeds_per_actor"].values()) == len(DOWN)  # only those chains


def test_retry_errors_false_keeps_the_error_rows(tmp_path, server, local_ray):
    _, first = _run(tmp_path, server)
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "records").iterdir()}
    server.outage = None
    summary, second = _run(tmp_path, server, "evolve.retry_errors=false")
    assert summary["errors"] == len(DOWN)
    pd.testing.assert_frame_equal(_by_id(second), _by_id(first))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "records").iterdir()} == files
