"""Evolution analysis on a hand-made evolve output laid out as the evolve job writes it."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import UserError
from eval.evolution import evolution_stats, read_evolution_records, read_evolve_cost, read_instructions


ROWS = {  # (status, round): [(op, reason, instruction tokens, response tokens)]
    ("kept", 0): [("seed", None, 10, 100), ("seed", None, 20, 200)],
    ("quarantined", 0): [("seed", "empty_instruction", None, None)],
    ("kept", 1): [("deepening", None, 30, 150), ("in_breadth", None, 40, 250)],
    ("kept", 2): [("deepening", None, 50, 300)],
    ("eliminated", 2): [("deepening", "template_leak", 45, 80), ("in_breadth", "could_not_answer", 25, 10),
                        ("in_breadth", "template_leak", 33, 90)],
}


SCHEMA = pa.schema([("id", pa.string()), ("op", pa.string()), ("reason", pa.string()), ("status", pa.string()),
                    ("round", pa.int64()), ("instruction", pa.string()), ("instruction_tokens", pa.int64()),
                    ("response_tokens", pa.int64())])


def records(status, round_index, rows, with_partition_columns):
    table = pa.Table.from_pylist([
        {"id": f"{status}-{round_index}-{i}", "op": op, "reason": reason, "status": status, "round": round_index,
         "instruction": f"Task {i} of round {round_index}", "instruction_tokens": it, "response_tokens": rt}
        for i, (op, reason, it, rt) in enumerate(rows)], schema=SCHEMA)
    return table if with_partition_columns else table.drop_columns(["status", "round"])


def make_evolve_output(root, layout="buckets"):
    """An evolve output as the job writes it: bucket files with every column (and an unfinished
    temp file to skip), or the earlier hive folders without the partition columns."""
    if layout == "buckets":
        os.makedirs(os.path.join(root, "records"), exist_ok=True)
        tables = [records(s, r, rows, True) for (s, r), rows in ROWS.items()]
        pq.write_table(pa.concat_tables(tables[:3]), os.path.join(root, "records", "bucket-00000.parquet"))
        pq.write_table(pa.concat_tables(tables[3:]), os.path.join(root, "records", "bucket-00001.parquet"))
        with open(os.path.join(root, "records", ".bucket-00002.parquet.x1y2"), "wb") as half_written:
            half_written.write(b"PAR1")
        return str(root)
    for (status, round_index), rows in ROWS.items():
        folder = os.path.join(root, "records", f"status={status}", f"round={round_index}")
        os.makedirs(folder, exist_ok=True)
        pq.write_table(records(status, round_index, rows, False), os.path.join(folder, "part-0.parquet"))
    return str(root)


@pytest.mark.parametrize("layout", ["buckets", "hive"])
def test_lengths_pass_rates_and_eliminations_of_a_known_output(tmp_path, layout):
    stats = evolution_stats(read_evolution_records(make_evolve_output(tmp_path, layout)))
    assert stats["records"] == 9
    assert stats["status"] == {"eliminated": 3, "kept": 5, "quarantined": 1}
    assert stats["lengths"] == [
        {"round": 0, "kept": 2, "instruction_tokens": 15.0, "response_tokens": 150.0},
        {"round": 1, "kept": 2, "instruction_tokens": 35.0, "response_tokens": 200.0},
        {"round": 2, "kept": 1, "instruction_tokens": 50.0, "response_tokens": 300.0}]
    assert stats["pass_rate"] == {
        "deepening": {"kept": 2, "eliminated": 1, "errors": 0, "pass_rate": pytest.approx(2 / 3)},
        "in_breadth": {"kept": 1, "eliminated": 2, "errors": 0, "pass_rate": pytest.approx(1 / 3)}}
    assert stats["rounds"] == {1: {"kept": 2, "eliminated": 0, "errors": 0, "pass_rate": 1.0},
                               2: {"kept": 1, "eliminated": 3, "errors": 0, "pass_rate": 0.25}}
    assert stats["eliminations"] == {1: {}, 2: {"could_not_answer": 1, "template_leak": 2}}  # round 1: none


def test_pass_rate_counts_errors_as_the_dataset_card_does(tmp_path):
    """A chain that failed (status error) is a candidate that was not kept: kept / (kept + eliminated + errors),
    as evol.summary and the dataset card count it; errors are shown per round."""
    root = make_evolve_output(tmp_path)
    errors = pa.Table.from_pylist([{"id": f"error-3-{i}", "op": "deepening", "reason": "generation_failed",
                                    "status": "error", "round": 3, "instruction": "x", "instruction_tokens": None,
                                    "response_tokens": None} for i in range(2)], schema=SCHEMA)
    pq.write_table(errors, os.path.join(root, "records", "bucket-00002.parquet"))
    stats = evolution_stats(read_evolution_records(root))
    assert stats["pass_rate"]["deepening"] == {"kept": 2, "eliminated": 1, "errors": 2, "pass_rate": 0.4}
    assert stats["rounds"][3] == {"kept": 0, "eliminated": 0, "errors": 2, "pass_rate": 0.0}
    assert stats["eliminations"] == {1: {}, 2: {"could_not_answer": 1, "template_leak": 2}, 3: {}}


@pytest.mark.parametrize("layout", ["buckets", "hive"])
def test_instructions_are_read_only_for_the_kept_ids_asked_for(tmp_path, layout):
    root = make_evolve_output(tmp_path, layout)
    assert read_instructions(root, ["kept-1-1", "eliminated-2-0", "kept-2-0", "nope"]) == \
        {"kept-1-1": "Task 1 of round 1", "kept-2-0": "Task 0 of round 2"}


def test_a_folder_without_records_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="has no records/ folder"):
        read_evolution_records(str(tmp_path))


def test_cost_is_read_from_the_evolve_summary_when_it_has_one(tmp_path):
    assert read_evolve_cost(str(tmp_path)) is None  # no summary.json
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"rounds": 4}))  # an evolve job that did not count cost
    assert read_evolve_cost(str(tmp_path)) is None
    summary.write_text('{"cost": ')  # half written
    assert read_evolve_cost(str(tmp_path)) is None
    cost = {"accelerator_seconds": 12.5, "reserved_accelerator_seconds": None, "per_kept_instruction": None,
            "price_per_accelerator_hour": None, "money": None, "per_round": []}
    summary.write_text(json.dumps({"rounds": 4, "cost": cost}))
    assert read_evolve_cost(str(tmp_path)) == cost
