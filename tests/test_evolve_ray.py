"""The evolve job end to end on a local 2-CPU Ray with tiny Llama models built in the test."""
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from common.config import UserError, load_config
from evol.config import EvolveConfig
from evol.pipeline import read_records, run_evolve


def _config(tmp_path, model, *overrides):
    return load_config(EvolveConfig, "configs/tiny.yaml",
                       [f"generation.model={model}", f"output.path={tmp_path / 'out'}", *overrides])


def _records(path):
    return read_records(str(path / "out" / "records")).to_pandas()


def test_two_rounds_counts_lineage_and_training_set(tmp_path, tiny_llama, local_ray):
    summary = run_evolve(_config(tmp_path, tiny_llama, "seeds.limit=10", "evolve.rounds=2"))
    records = _records(tmp_path)
    seeds = records[records["round"] == 0]
    assert len(seeds) == 10 and set(seeds["status"]) == {"kept"}
    for r in (1, 2):
        assert len(records[records["round"] == r]) == 10  # every pool item evolves once per round
    assert records["id"].is_unique
    # lineage: every parent exists, and following parents always ends at the root seed in round 0
    by_id = records.set_index("id")
    for _, row in records[records["round"] > 0].iterrows():
        parent = by_id.loc[row["parent_id"]]
        assert parent["status"] == "kept" and parent["round"] < row["round"]
        node = row
        while isinstance(node["parent_id"], str):
            node = by_id.loc[node["parent_id"]]
        assert node["round"] == 0 and node.name == row["root_id"]
    eliminated = records[records["status"] == "eliminated"]
    assert eliminated["reason"].notna().all()
    assert records[records["status"] == "kept"]["reason"].isna().all()
    kept_candidates = int(((records["round"] > 0) & (records["status"] == "kept")).sum())
    assert summary["candidates"] == 20 == summary["kept"] + summary["eliminated"]
    assert summary["kept"] == kept_candidates and summary["seeds"]["read"] == 10
    assert summary["requests"] == int(records["requests"].sum())
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["kept"] == summary["kept"] and len(saved["rounds"]) == 2
    # training set: seeds + kept candidates, each with a response, in parquet and chat jsonl
    training = pq.read_table(tmp_path / "out" / "training" / "parquet").to_pylist()
    assert len(training) == 10 + kept_candidates == summary["training_rows"]
    assert all(t["response"] and t["messages"][1]["content"] == t["response"] for t in training)
    lines = [json.loads(line) for f in (tmp_path / "out" / "training" / "jsonl").iterdir()
             for line in f.read_text().splitlines()]
    assert len(lines) == len(training)
    assert all([m["role"] for m in line["messages"]] == ["user", "assistant"] for line in lines)


def test_failed_evolutions_send_their_parent_back(tmp_path, sorry_llama, local_ray, monkeypatch):
    from pathlib import Path

    # The model is given relative to the driver's folder; actors run elsewhere and must still find it.
    cfg = _config(tmp_path, Path(sorry_llama).name, "seeds.limit=4", "evolve.rounds=2")
    monkeypatch.chdir(Path(sorry_llama).parent)
    summary = run_evolve(cfg)
    records = _records(tmp_path)
    candidates = records[records["round"] > 0]
    assert len(candidates) == 8 and set(candidates["status"]) == {"eliminated"}
    assert set(candidates["reason"]) == {"could_not_answer"}
    assert (candidates["parent_id"] == candidates["root_id"]).all()  # round 2 restarts from the seed
    assert summary["kept"] == 0 and summary["training_rows"] == 4
    assert summary["rounds"][1]["eliminated_by_rule"] == {"could_not_answer": 4}


def test_bad_rows_are_quarantined_with_reasons(tmp_path, tiny_llama, local_ray):
    """A folder of jsonl + json + parquet seeds with every bad-row kind mixed into good rows."""
    import pyarrow as pa

    folder = tmp_path / "seeds"
    folder.mkdir()
    long_instruction = "word " * 300
    (folder / "a.jsonl").write_text("\n".join([
        '{"id": "g1", "instruction": "Name three rivers."}',
        '{"id": "g2", "instruction": "Add the numbers.", "input": "1, 2"}',
        '{"id": "bad-json", "instruction": ',
        '{"id": "g1", "instruction": "Duplicate id."}',
        '{"id": "empty", "instruction": "  "}',
        '{"id": "number", "instruction": 12}',
        '{"id": "none"}',
        f'{{"id": "long", "instruction": "{long_instruction}"}}',
        '{"id": "g3", "instruction": "Write a haiku."}',
    ]) + "\n")
    (folder / "b.json").write_text(json.dumps([{"id": "j1", "instruction": "Define entropy."}, ["not", "object"]]))
    pq.write_table(pa.table({"id": ["p1", "g2"], "instruction": ["Explain tides.", "Duplicate across files."]}),
                   folder / "c.parquet")
    (folder / "notes.txt").write_text("not a seed file: ignored in a folder")
    summary = run_evolve(_config(tmp_path, tiny_llama, f"seeds.path={folder}", "evolve.rounds=1",
                                 "seeds.max_instruction_tokens=100", "seeds.limit=null"))
    records = _records(tmp_path)
    quarantined = records[records["status"] == "quarantined"]
    reasons = {(src.rsplit("/", 1)[-1], int(line)): reason
               for src, line, reason in zip(quarantined["source"], quarantined["line"], quarantined["reason"])}
    assert reasons == {("a.jsonl", 3): "malformed_json", ("a.jsonl", 4): "duplicate_id",
                       ("a.jsonl", 5): "empty_instruction", ("a.jsonl", 6): "instruction_not_string",
                       ("a.jsonl", 7): "missing_instruction", ("a.jsonl", 8): "too_many_tokens",
                       ("b.json", 1): "not_an_object", ("c.parquet", 1): "duplicate_id"}
    assert set(quarantined[quarantined["reason"] == "malformed_json"]["raw"]) == {'{"id": "bad-json", "instruction": '}
    assert summary["seeds"]["read"] == 13 == summary["seeds"]["used"] + summary["seeds"]["quarantined"]
    assert summary["seeds"]["used"] == 5 and summary["candidates"] == 5
    used = records[(records["round"] == 0) & (records["status"] == "kept")]
    assert sorted(used["id"]) == ["g1", "g2", "g3", "j1", "p1"]


def test_user_mistakes_fail_fast_without_ray(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run_evolve(load_config(EvolveConfig, "configs/tiny.yaml", [f"seeds.path={tmp_path}/nope.jsonl"]))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("old")
    with pytest.raises(UserError, match="already holds results"):
        run_evolve(load_config(EvolveConfig, "configs/tiny.yaml", [f"output.path={tmp_path / 'out'}"]))
    (tmp_path / "out" / "seeds.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(UserError, match="contains the seeds"):
        run_evolve(load_config(EvolveConfig, "configs/tiny.yaml", [
            f"output.path={tmp_path / 'out'}", f"seeds.path={tmp_path / 'out' / 'seeds.jsonl'}",
            "output.overwrite=true"]))
    assert (tmp_path / "out" / "seeds.jsonl").exists()


def test_a_seed_file_without_rows_is_a_clear_error(tmp_path, local_ray):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="holds no seed rows"):
        run_evolve(load_config(EvolveConfig, "configs/tiny.yaml", [
            f"seeds.path={tmp_path / 'empty.jsonl'}", f"output.path={tmp_path / 'out'}",
            "generation.backend=echo"]))


@pytest.mark.parametrize("override, message", [
    ("evolve.roundz=1", "config error: evolve.roundz: unknown key"),
    ("seeds.path=/nonexistent/seeds.jsonl", "error: seeds.path: /nonexistent/seeds.jsonl does not exist"),
])
def test_cli_errors_are_one_line_with_exit_2(override, message):
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message
