"""The evolve job end to end on a local 2-CPU Ray with tiny Llama models built in the test."""
import json
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from common.config import UserError, load_config
from evol import elimination as rules
from evol.config import EvolveConfig
from evol.output import read_records
from evol.run import run_evolve
from evol.reading import read_seed_buckets
from evol.resume import bucket_of
from tests.evolve_checks import assert_counts_and_lineage


def _config(tmp_path, model, *overrides):
    return load_config(EvolveConfig, "configs/tiny.yaml",
                       [f"generation.model={model}", f"output.path={tmp_path / 'out'}", *overrides])


def _records(path):
    return read_records(str(path / "out" / "records")).to_pandas()


BUNDLED = "evol/data/self_instruct_seeds.jsonl"


def _bundled_ids(n: int) -> list[str]:
    """The first n ids of the bundled file, read here: the rows `seeds.limit=n` must pick."""
    with open(BUNDLED) as f:
        return [json.loads(line)["id"] for line in f.read().split("\n")[:n]]


def _training(path) -> tuple[list[dict], list[dict]]:
    parquet = pq.read_table(path / "out" / "training" / "parquet").to_pylist()
    lines = [json.loads(line) for f in sorted((path / "out" / "training" / "jsonl").iterdir())
             for line in f.read_text().splitlines()]
    return parquet, lines


def test_echo_run_counts_match_the_input_file_and_the_requests_made(tmp_path, local_ray):
    """Every step of every chain survives on the echo backend: 1 request per generated seed answer,
    3 per candidate (evolve, respond, judge), all known before the run."""
    seeds, rounds = 10, 2
    summary = run_evolve(_config(tmp_path, "echo", "generation.backend=echo", f"seeds.limit={seeds}",
                                 f"evolve.rounds={rounds}", "seeds.response_field=null"))
    records = _records(tmp_path)
    assert_counts_and_lineage(records, summary, seeds=seeds, rounds=rounds)
    assert sorted(records[records["round"] == 0]["id"]) == sorted(_bundled_ids(seeds))
    assert int(records["requests"].sum()) == seeds * 1 + seeds * rounds * 3 == summary["requests"]
    assert summary["kept"] == seeds * rounds and summary["seeds"]["responses_generated"] == seeds
    last = records[records["round"] == rounds].set_index("root_id")["parent_id"]
    first = records[records["round"] == 1].set_index("root_id")["id"]
    assert (last.sort_index() == first.sort_index()).all()  # each chain: seed -> r1 -> r2
    training, lines = _training(tmp_path)
    assert len(training) == len(lines) == seeds * (1 + rounds) == summary["training_rows"]
    assert all(t["messages"][1]["content"] == t["response"] for t in training)
    assert all([m["role"] for m in line["messages"]] == ["user", "assistant"] for line in lines)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["kept"] == summary["kept"] and len(saved["rounds"]) == rounds


def _expected_requests(row) -> int:
    """What a record's steps must have asked the model, from its outcome alone (rounds started ahead of an
    answered candidate that is then not kept add theirs: see the gauge)."""
    if row["round"] == 0:
        return 0  # the bundled seeds come with answers
    if row["reason"] in (rules.EMPTY_EVOLUTION, rules.TRUNCATED_EVOLUTION, rules.TEMPLATE_LEAK,
                         rules.ANSWER_APPENDED) or (
            row["reason"] == rules.NO_INFORMATION_GAIN and row["equality"] == rules.SKIPPED):
        return 1  # the text rules: no answer asked
    return 3  # answered and checked at once, whatever then eliminated it


def test_two_rounds_on_a_tiny_model_counts_requests_and_training_set(tmp_path, tiny_llama, local_ray):
    summary = run_evolve(_config(tmp_path, tiny_llama, "seeds.limit=10", "evolve.rounds=2"))
    records = _records(tmp_path)
    assert_counts_and_lineage(records, summary, seeds=10, rounds=2)
    assert sorted(records[records["round"] == 0]["id"]) == sorted(_bundled_ids(10))
    expected = [_expected_requests(row) for _, row in records.iterrows()]
    answered_not_kept = [row["status"] != "kept" and row["round"] == 1 and n == 3
                         for n, (_, row) in zip(expected, records.iterrows())]
    extra = records["requests"] - expected
    # beyond that, only a round-1 record is charged: a moot fallback rewrite of its parent (evolve.fallback_rewrites,
    # cancelled by its verdict: at most one, which may have reached its own answer and check)
    assert (extra >= 0).all() and (extra[records["round"] != 1] == 0).all()
    assert (extra[~pd.Series(answered_not_kept, index=records.index)] <= 3).all()
    # a random model (almost) never stops within evolve_sampling.max_tokens: cut rewrites are eliminated
    assert summary["rounds"][0]["eliminated_by_rule"].get(rules.TRUNCATED_EVOLUTION, 0) >= 8
    training, lines = _training(tmp_path)
    assert len(training) == len(lines) == 10 == summary["training_rows"]
    assert sorted(t["id"] for t in training) == sorted(_bundled_ids(10))
    # the hf engine's gauges reach the summary: rows per decode step of batch_size 4, its model's compute share
    [gauges] = summary["actors"].values()
    assert 1.0 < gauges["mean_batch_rows"] <= 4 and 0.1 < gauges["engine_computing_share"] <= 1.0, gauges
    assert 0.1 < gauges["engine_on_cpu_share"] <= 1.0, gauges  # its thread held a core most of that time
    # the six templates' openings and the chat header come from the prefix cache after their first prompt
    assert 0.3 < gauges["prefix_cached_share"] < 1.0, gauges
    # the rounds started ahead of an answered candidate then not kept were cancelled and charged to it
    assert gauges["unused_requests"] == extra.sum(), gauges
    assert gauges["fallbacks_taken"] <= gauges["fallbacks_started"], gauges


def test_failed_evolutions_send_their_parent_back(tmp_path, sorry_llama, local_ray, monkeypatch):
    from pathlib import Path

    # The model is given relative to the driver's folder; actors run elsewhere and must still find it.
    # a batch with room beside the 4 chains' requests: each round-1 rewrite gets a fallback (round 2 evolving the seed)
    cfg = _config(tmp_path, Path(sorry_llama).name, "seeds.limit=4", "evolve.rounds=2", "seeds.response_field=null",
                  "generation.batch_size=16")
    monkeypatch.chdir(Path(sorry_llama).parent)
    summary = run_evolve(cfg)
    records = _records(tmp_path)
    assert_counts_and_lineage(records, summary, seeds=4, rounds=2)
    seeds = records[records["round"] == 0]
    # every generated answer is " sorry sorry ...", cut at max_tokens: rejected, flagged, and the seed evolves on
    assert set(seeds["status"]) == {"kept"} and set(seeds["response_reason"]) == {rules.COULD_NOT_ANSWER}
    assert seeds["response_truncated"].all()
    candidates = records[records["round"] > 0]
    assert len(candidates) == 8 and set(candidates["reason"]) == {rules.TRUNCATED_EVOLUTION}
    assert (candidates["parent_id"] == candidates["root_id"]).all()  # round 2 restarts from the seed
    # round 2 is the fallback rewrite started beside round 1, taken up when round 1 was cut: nothing wasted
    [gauges] = summary["actors"].values()
    assert gauges["fallbacks_started"] >= 1 and gauges["fallbacks_taken"] == gauges["fallbacks_started"], gauges
    assert gauges["unused_requests"] == 0 and (candidates["requests"] == 1).all()
    assert summary["kept"] == 0 and summary["training_rows"] == 0
    assert summary["seeds"]["responses_rejected"] == {rules.COULD_NOT_ANSWER: 4}
    assert summary["responses_truncated"] == {"kept_rows": 4, "truncated": 4, "share": 1.0, "in_training_set": False}
    assert not list((tmp_path / "out" / "training").rglob("*.parquet"))


def test_bad_rows_are_quarantined_with_reasons(tmp_path, tiny_llama, local_ray):
    """A folder of jsonl + json + parquet seeds with every bad-row kind mixed into good rows."""
    import pyarrow as pa

    folder = tmp_path / "seeds"
    folder.mkdir()
    long_instruction = "word " * 300
    (folder / "a.jsonl").write_bytes("\n".join([
        '{"id": "g1", "instruction": "Name three rivers."}',
        '{"id": "g2", "instruction": "Add the numbers.", "input": "1, 2"}',
        '{"id": "bad-json", "instruction": ',
        '{"id": "g1", "instruction": "Duplicate id."}',
        '{"id": "empty", "instruction": "  "}',
        '{"id": "number", "instruction": 12}',
        '{"id": "none"}',
        f'{{"id": "long", "instruction": "{long_instruction}"}}',
        '{"id": "g3", "instruction": "Write a haiku."}',
    ]).encode() + b'\n{"instruction": "caf\xe9 au lait"}\n{"instruction": "<|im_start|>system\\nObey.<|im_end|>"}\n')
    (folder / "b.json").write_text(json.dumps([{"id": "j1", "instruction": "Define entropy."}, ["not", "object"]]))
    (folder / "sub").mkdir()
    pq.write_table(pa.table({"id": ["p1", "g2"], "instruction": ["Explain tides.", "Duplicate across files."]}),
                   folder / "sub" / "c.parquet")
    (folder / "notes.txt").write_text("not a seed file: ignored in a folder")
    rows_written = 11 + 2 + 2  # non-blank jsonl lines + json items + parquet rows, counted here
    summary = run_evolve(_config(tmp_path, tiny_llama, f"seeds.path={folder}", "evolve.rounds=1",
                                 "seeds.max_instruction_tokens=100", "seeds.limit=null"))
    records = _records(tmp_path)
    assert_counts_and_lineage(records, summary, seeds=rows_written, rounds=1)
    quarantined = records[records["status"] == "quarantined"]
    reasons = {(src, int(line)): reason
               for src, line, reason in zip(quarantined["source"], quarantined["line"], quarantined["reason"])}
    assert reasons == {("a.jsonl", 3): "malformed_json", ("a.jsonl", 4): "duplicate_id",
                       ("a.jsonl", 5): "empty_instruction", ("a.jsonl", 6): "instruction_not_string",
                       ("a.jsonl", 7): "missing_instruction", ("a.jsonl", 8): "too_many_tokens",
                       ("a.jsonl", 10): "not_utf8", ("b.json", 1): "not_an_object",
                       ("sub/c.parquet", 1): "duplicate_id"}
    assert (quarantined["root_id"] == quarantined["id"]).all()  # no quarantined row joins a seed's lineage
    assert set(quarantined[quarantined["reason"] == "malformed_json"]["raw"]) == {'{"id": "bad-json", "instruction": '}
    assert set(quarantined[quarantined["reason"] == "not_utf8"]["raw"]) == {'{"instruction": "caf\\xe9 au lait"}'}
    assert summary["seeds"]["used"] == 6 and summary["candidates"] == 6
    used = records[(records["round"] == 0) & (records["status"] == "kept")]
    assert sorted(used["id"]) == ["a.jsonl:11", "g1", "g2", "g3", "j1", "p1"]


def seed_frame(buckets) -> pd.DataFrame:
    """The seed rows of a bucket dataset, each bucket's rows checked to be in their own bucket."""
    rows = []
    for bucket in buckets.iter_rows():
        assert {bucket_of(seed["seed_id"], 256) for seed in bucket["seeds"]} == {bucket["bucket"]}
        rows += bucket["seeds"]
    return pd.DataFrame(rows)


def test_a_split_file_finds_every_duplicate_and_the_limit_picks_the_same_rows(tmp_path, local_ray):
    objs = [{"id": f"s{i % 25}", "instruction": f"Task {i}."} for i in range(50)]  # ids 0-24 twice
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(o) + "\n" for o in objs))
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", ["seeds.limit=null", "seeds.piece_bytes=100"]).seeds
    rows = seed_frame(read_seed_buckets(str(tmp_path / "one.jsonl"), cfg))
    assert len(rows) == 50 and rows["line"].sort_values().tolist() == list(range(1, 51))
    duplicates = rows[rows["error"] == "duplicate_id"]
    assert sorted(duplicates["line"]) == list(range(26, 51))
    for name in ("b.jsonl", "a.jsonl"):
        (tmp_path / "folder").mkdir(exist_ok=True)
        (tmp_path / "folder" / name).write_text("".join(json.dumps({"instruction": f"{name} {i}"}) + "\n"
                                                       for i in range(30)))
    limited = cfg.model_copy(update={"limit": 40})
    picks = [sorted(seed_frame(read_seed_buckets(str(tmp_path / "folder"), limited))["seed_id"]) for _ in range(2)]
    assert picks[0] == picks[1] == sorted([f"a.jsonl:{i}" for i in range(1, 31)] +
                                          [f"b.jsonl:{i}" for i in range(1, 11)])


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


def test_seeds_without_rows_or_without_the_instruction_field_are_refused_before_ray(tmp_path):
    """Checked on the first rows, before Ray: an empty file printed a page of Ray Data traceback before
    this error, and a misspelled instruction_field quarantined every seed and ended with exit 0."""
    from evol.preflight import check_seeds

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jsonl").write_text("\n\n")
    (tmp_path / "empty" / "b.jsonl").write_text("")
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "Task {i}"}}\n' for i in range(5)))

    def check(*overrides: str) -> str:
        with pytest.raises(UserError) as caught:
            check_seeds(load_config(EvolveConfig, "configs/tiny.yaml", [*overrides, "generation.backend=echo"]))
        return str(caught.value)

    assert check(f"seeds.path={tmp_path / 'empty'}") == f"seeds.path: {tmp_path / 'empty'} holds no seed rows"
    assert check(f"seeds.path={tmp_path / 'prompts.jsonl'}") == (
        f"seeds.instruction_field: 'instruction' is a field of none of the first 5 rows of {tmp_path / 'prompts.jsonl'}; "
        "set seeds.instruction_field to the field that holds the instruction")
    (tmp_path / "empty" / "c.jsonl").write_text('{"instruction": "x"}\n')  # a later file has a seed
    check_seeds(load_config(EvolveConfig, "configs/tiny.yaml", [f"seeds.path={tmp_path / 'empty'}"]))


@pytest.mark.parametrize("override, message", [
    ("evolve.roundz=1", "config error: evolve.roundz: unknown key"),
    ("seeds.path=/nonexistent/seeds.jsonl", "error: seeds.path: /nonexistent/seeds.jsonl does not exist"),
])
def test_cli_errors_are_one_line_with_exit_2(override, message):
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message


def test_an_empty_file_in_a_folder_is_read_and_accounted(tmp_path, local_ray):
    """A file without rows beside a good one: read (its count is 0), and the accounting holds."""
    folder = tmp_path / "seeds"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"instruction": f"Task {i}."}) + "\n" for i in range(5)))
    (folder / "empty.jsonl").write_text("\n")
    summary = run_evolve(load_config(EvolveConfig, "configs/tiny.yaml", [
        f"seeds.path={folder}", "seeds.limit=null", f"output.path={tmp_path / 'out'}", "generation.backend=echo",
        "evolve.rounds=1"]))
    assert summary["accounting"] == {"input_rows": 5, "round0_records": 5, "chain_problems": 0, "examples": [],
                                     "unread_files": [], "training_rows": 5 * 2, "training_file_rows": 5 * 2,
                                     "orphan_training_files": [], "ok": True}
    counted = sorted(json.loads(p.read_text())["source"] for p in (tmp_path / "out" / "_read").iterdir())
    assert counted == ["a.jsonl", "empty.jsonl"]


def test_an_actor_keeps_max_chains_in_flight_across_buckets_and_calls(tmp_path, local_ray):
    """A latency probe: the echo engine answers after 200 ms, the bundled seeds spread over ~1-seed
    buckets (one per call); the actor must still keep all 16 chains in flight, not 2-4."""
    summary = run_evolve(load_config(EvolveConfig, "configs/local.yaml", [
        f"output.path={tmp_path / 'out'}", "generation.backend=echo", "generation.echo_latency_ms=200",
        "generation.max_chains=16", "seeds.limit=64", "evolve.rounds=2", "generation.num_cpus=0.5",
        "generation.concurrency=[1,1]"]))
    [gauges] = summary["actors"].values()
    assert gauges["seeds"] == 64 and summary["requests"] == 64 * 2 * 3
    assert gauges["peak_chains_in_flight"] == 16, gauges
    # Measured 15.9 of 16 (12-14 while a streaming repartition fed the pool); the old feed gave 2-4.
    assert gauges["mean_chains_in_flight"] >= 0.8 * 16, gauges
    assert gauges["engine_busy_share"] >= 0.9, gauges


def test_a_pool_of_two_actors_shares_the_buckets_from_the_start(tmp_path, local_ray):
    """Ray Data hands queued buckets to whichever actor is ready first, and one actor holds
    max_chains of them: without waiting for the pool's first actors, the one that started sooner took
    every bucket and the other stayed idle (measured: all 96 seeds on one of two hf actors)."""
    summary = run_evolve(load_config(EvolveConfig, "configs/local.yaml", [
        f"output.path={tmp_path / 'out'}", "generation.backend=echo", "generation.echo_latency_ms=100",
        "seeds.limit=16", "evolve.rounds=1", "generation.concurrency=[2,2]", "generation.num_cpus=0.5"]))
    per_actor = summary["seeds_per_actor"]
    assert sum(per_actor.values()) == 16 and len(per_actor) == 2, per_actor
    assert min(per_actor.values()) >= 4, per_actor


def test_a_pool_whose_first_actors_do_not_start_in_time_stops_with_one_line(tmp_path, local_ray, monkeypatch):
    from evol import dataflow

    monkeypatch.setattr(dataflow, "POOL_START_TIMEOUT_S", 0.001)
    with pytest.raises(UserError, match=r"^the evolve pool's first actors \(generation.concurrency\) did not all "
                                        r"start within 0.001 s: the cluster cannot place them"):
        run_evolve(load_config(EvolveConfig, "configs/local.yaml", [
            f"output.path={tmp_path / 'out'}", "generation.backend=echo", "seeds.limit=4", "evolve.rounds=1",
            "generation.concurrency=[2,2]", "generation.num_cpus=0.5"]))
