"""Evolution analysis on a hand-made evolve output laid out as the evolve job writes it."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import UserError
from eval.evolution import evolution_stats, read_evolution_records, read_instructions


def write_records(root, status, round_index, rows):
    """One parquet file under records/status=S/round=R, without the partition columns (as Ray writes)."""
    folder = os.path.join(root, "records", f"status={status}", f"round={round_index}")
    os.makedirs(folder, exist_ok=True)
    table = pa.Table.from_pylist([{"id": f"{status}-{round_index}-{i}", "op": op, "reason": reason,
                                   "instruction": f"Task {i} of round {round_index}",
                                   "instruction_tokens": it, "response_tokens": rt}
                                  for i, (op, reason, it, rt) in enumerate(rows)],
                                 schema=pa.schema([("id", pa.string()), ("op", pa.string()), ("reason", pa.string()),
                                                   ("instruction", pa.string()), ("instruction_tokens", pa.int64()),
                                                   ("response_tokens", pa.int64())]))
    pq.write_table(table, os.path.join(folder, "part-0.parquet"))


def make_evolve_output(root):
    write_records(root, "kept", 0, [("seed", None, 10, 100), ("seed", None, 20, 200)])
    write_records(root, "quarantined", 0, [("seed", "empty_instruction", None, None)])
    write_records(root, "kept", 1, [("deepening", None, 30, 150), ("in_breadth", None, 40, 250)])
    write_records(root, "kept", 2, [("deepening", None, 50, 300)])
    write_records(root, "eliminated", 2, [("deepening", "template_leak", 45, 80),
                                          ("in_breadth", "could_not_answer", 25, 10),
                                          ("in_breadth", "template_leak", 33, 90)])
    return str(root)


def test_lengths_pass_rates_and_eliminations_of_a_known_output(tmp_path):
    stats = evolution_stats(read_evolution_records(make_evolve_output(tmp_path)))
    assert stats["records"] == 9
    assert stats["status"] == {"eliminated": 3, "kept": 5, "quarantined": 1}
    assert stats["lengths"] == [
        {"round": 0, "kept": 2, "instruction_tokens": 15.0, "response_tokens": 150.0},
        {"round": 1, "kept": 2, "instruction_tokens": 35.0, "response_tokens": 200.0},
        {"round": 2, "kept": 1, "instruction_tokens": 50.0, "response_tokens": 300.0}]
    assert stats["pass_rate"] == {
        "deepening": {"kept": 2, "eliminated": 1, "pass_rate": pytest.approx(2 / 3)},
        "in_breadth": {"kept": 1, "eliminated": 2, "pass_rate": pytest.approx(1 / 3)}}
    assert stats["eliminations"] == {2: {"could_not_answer": 1, "template_leak": 2}}


def test_instructions_are_read_only_for_the_kept_ids_asked_for(tmp_path):
    root = make_evolve_output(tmp_path)
    assert read_instructions(root, ["kept-1-1", "eliminated-2-0", "kept-2-0", "nope"]) == \
        {"kept-1-1": "Task 1 of round 1", "kept-2-0": "Task 0 of round 2"}


def test_a_folder_without_records_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="has no records/ folder"):
        read_evolution_records(str(tmp_path))
