"""The evolve output as a dataset: its card (README.md) and a training set that `datasets` loads."""
import json

import pyarrow.parquet as pq
import pytest
import yaml

from common.config import load_config
from evol.card import TRAINING_GLOB, render_card, size_category
from evol.config import EvolveConfig
from evol.run import run_evolve

ROUNDS = [
    {"round": 1, "candidates": 4, "kept": 3, "eliminated": 1, "errors": 0, "pass_rate": 0.75,
     "by_operation": {"deepening": {"candidates": 3, "kept": 2, "pass_rate": 0.6667},
                      "in_breadth": {"candidates": 1, "kept": 1, "pass_rate": 1.0}},
     "eliminated_by_rule": {"template_leak": 1}, "errors_by_reason": {}, "equality_unparsed_share": 0.5,
     "mean_kept_instruction_tokens": 41.5, "mean_kept_response_tokens": 120.0},
    {"round": 2, "candidates": 4, "kept": 1, "eliminated": 2, "errors": 1, "pass_rate": 0.25,
     "by_operation": {"deepening": {"candidates": 4, "kept": 1, "pass_rate": 0.25}},
     "eliminated_by_rule": {"template_leak": 1, "truncated_evolution": 1}, "errors_by_reason": {"http_500": 1},
     "equality_unparsed_share": None, "mean_kept_instruction_tokens": 77.0, "mean_kept_response_tokens": None},
]
SUMMARY = {
    "seeds": {"read": 5, "used": 4, "quarantined": 1, "errors": 0},
    "candidates": 8, "kept": 4, "eliminated": 3, "errors": 1, "training_rows": 7,
    "responses_truncated": {"truncated": 1, "in_training_set": False}, "rounds": ROUNDS,
    "cost": {"accelerator_seconds": 12.0, "reserved_accelerator_seconds": 30.0, "per_kept_instruction": 3.0,
             "price_per_accelerator_hour": 3.6, "money": 0.012,
             "per_round": [{"round": 0, "accelerator_seconds": 0.0, "kept": 4, "per_kept": 0.0},
                           {"round": 1, "accelerator_seconds": 8.0, "kept": 3, "per_kept": 2.6667},
                           {"round": 2, "accelerator_seconds": 4.0, "kept": 1, "per_kept": 4.0}]},
    "output": "/data/run",
}


def _card(*overrides: str, summary: dict = SUMMARY) -> tuple[dict, str]:
    text = render_card(summary, load_config(EvolveConfig, "configs/local.yaml", list(overrides)))
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def _table_row(body: str, first_cell: str) -> str:
    return next(line for line in body.splitlines() if line.startswith(f"| {first_cell} |"))


def test_the_front_matter_is_a_hub_card_pointing_at_the_training_files():
    meta, _ = _card()
    assert meta == {"license": "apache-2.0", "task_categories": ["text-generation"], "language": ["en"],
                    "size_categories": ["n<1K"], "tags": ["evol-instruct", "synthetic", "instruction-tuning", "evolray"],
                    "configs": [{"config_name": "default",
                                 "data_files": [{"split": "train", "path": "training/parquet/*.parquet"}]}]}


def test_unknown_seeds_or_models_leave_the_licence_to_the_user():
    meta, body = _card("seeds.path=/data/my_seeds.jsonl")
    assert meta["license"] == "unknown" and "language" not in meta
    assert "`/data/my_seeds.jsonl` (the first 16 rows); their source and licence are not recorded here" in body
    meta, body = _card("judge={backend: openai, model: gpt-4o-mini}")
    assert meta["license"] == "unknown" and "**Judge** (equality check, elimination rule 1): `gpt-4o-mini`" in body
    meta, body = _card("generation.backend=echo")  # a dry run: the seeds' licence, no model named
    assert meta["license"] == "apache-2.0" and "the `echo` backend (canned text: a dry run, no model)" in body


def test_the_body_says_what_it_is_where_it_came_from_and_every_count():
    _, body = _card()
    assert "arXiv 2304.12244" in body and "Self-Instruct (Wang et al., 2022" in body
    assert "`bundled:self_instruct_seeds.jsonl` (the first 16 rows)" in body
    assert "**Writer** (rewrites, answers, missing seed answers): `smollm2-135m-instruct` (hf backend" in body
    assert "- **Rounds:** 4 " in body
    assert "- Seeds: 5 read = 4 used + 1 quarantined + 0 errors." in body
    assert "- Candidates: 8 = 4 kept + 3 eliminated + 1 errors." in body
    assert "- Training rows: **7**" in body


def test_per_round_tables_give_pass_rates_rules_and_lengths():
    _, body = _card()
    assert _table_row(body, "1") == "| 1 | 4 | 3 | 1 | 0 | 75.0% | 41.5 | 120.0 | 50.0% |"
    assert _table_row(body, "2") == "| 2 | 4 | 1 | 2 | 1 | 25.0% | 77.0 | - | - |"
    assert _table_row(body, "deepening") == "| deepening | 2/3 | 1/4 | 3/7 (42.9%) |"
    assert _table_row(body, "in_breadth") == "| in_breadth | 1/1 | - | 1/1 (100.0%) |"
    assert _table_row(body, "template_leak") == "| template_leak | 1 | 1 | 2 |"
    assert _table_row(body, "truncated_evolution") == "| truncated_evolution | 0 | 1 | 1 |"
    assert _table_row(body, "error: http_500") == "| error: http_500 | 0 | 1 | 1 |"


def test_cost_and_how_to_load():
    _, body = _card()
    assert "Accelerator-seconds of engine time: **12.0**, 3.000 per kept evolved instruction; money: 0.0120 at 3.6" in body
    assert "30.0 accelerator-seconds" in body
    assert "| round | accelerator-seconds | kept | per kept |" in body and _table_row(body, "0").startswith("| 0 | 0.00 |")
    # a local output is shown relative to the card's folder: a published copy shows no local path
    assert 'load_dataset("parquet", data_files="./training/parquet/*.parquet", split="train")' in body
    assert 'pd.read_parquet("./training/parquet")' in body and "s3fs" not in body and "/data/run" not in body
    _, body = _card(summary=SUMMARY | {"output": "s3://bucket/run", "training_rows": 0})
    assert "`datasets` reads s3:// paths with `s3fs` installed" in body and "**The training set is empty**" in body
    assert 'pd.read_parquet("s3://bucket/run/training/parquet")' in body
    _, body = _card(summary={key: value for key, value in SUMMARY.items() if key != "cost"})
    assert "## Cost" not in body  # summaries of runs from before cost accounting


def test_size_categories_follow_the_hub_buckets():
    assert [size_category(n) for n in (0, 999, 1_000, 99_999, 250_000, 10**7)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "n>10M"]


def test_an_echo_run_writes_a_card_and_a_training_set_that_datasets_loads(tmp_path, local_ray, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "out"
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", [
        "generation.backend=echo", "generation.echo_latency_ms=20", "seeds.limit=6", "evolve.rounds=2",
        f"output.path={out}", "output.buckets=4", "cost.price_per_accelerator_hour=3.6"])
    summary = run_evolve(cfg)
    from datasets import load_dataset

    files = sorted(str(path) for path in (out / "training" / "parquet").glob("*.parquet"))
    loaded = load_dataset("parquet", data_files=str(out / TRAINING_GLOB), split="train",
                          cache_dir=str(tmp_path / "hf-cache"))
    expected = pq.read_table(out / "training" / "parquet").to_pylist()
    assert len(files) > 1 and loaded.num_rows == summary["training_rows"] == len(expected) == 6 * 3
    assert loaded.column_names == ["id", "root_id", "round", "op", "instruction", "input", "response", "messages"]
    assert sorted(loaded.to_list(), key=lambda row: row["id"]) == sorted(expected, key=lambda row: row["id"])
    from_card = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))  # the card's configs
    assert sorted(from_card["id"]) == sorted(row["id"] for row in expected)

    saved = json.loads((out / "summary.json").read_text())
    _, meta, body = (out / "README.md").read_text().split("---\n", 2)
    assert yaml.safe_load(meta)["configs"][0]["data_files"][0]["path"] == TRAINING_GLOB
    assert f"- Training rows: **{saved['training_rows']}**" in body
    assert f"- Candidates: {saved['candidates']} = {saved['kept']} kept + {saved['eliminated']} eliminated" in body
    assert f"- Seeds: {saved['seeds']['read']} read = {saved['seeds']['used']} used" in body
    cost = saved["cost"]
    records = pq.read_table(out / "records").to_pandas()
    assert cost["accelerator_seconds"] > 0  # 20 ms per echo request
    assert cost["accelerator_seconds"] == pytest.approx(records["gen_seconds"].sum(), abs=2e-3)
    assert cost["money"] == pytest.approx(cost["accelerator_seconds"] / 1000, abs=1e-6)  # 3.6 per hour
    assert cost["per_kept_instruction"] == pytest.approx(cost["accelerator_seconds"] / saved["kept"], abs=1e-3)
    assert [r["kept"] for r in cost["per_round"]] == [6, 6, 6]
    assert cost["reserved_accelerator_seconds"] == pytest.approx(saved["wall_seconds"], abs=0.01)  # 1 CPU actor
