"""Test sets through a field mapping: every row becomes one item or one quarantined row with a reason."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import UserError
from eval.testset import (BAD_CATEGORY, BAD_DIFFICULTY, BAD_REFERENCE, DUPLICATE_ID, EMPTY_INSTRUCTION,
                          INSTRUCTION_NOT_STRING, MALFORMED_JSON, MISSING_INSTRUCTION, NOT_AN_OBJECT,
                          UNREADABLE_FILE, ItemFields, parse_testset_file, quarantine_counts, read_testset,
                          resolve_testset_path, select_items)

MAPPED = ItemFields(instruction="prompt", id="qid", category="topic", difficulty=None, reference="gold")


def test_vendored_wizardlm_set_reads_218_items_of_29_skills():
    rows = read_testset(resolve_testset_path("bundled:wizardlm_testset.jsonl"), ItemFields())
    assert len(rows) == 218 and quarantine_counts(rows) == {}
    assert len({r["category"] for r in rows}) == 29
    assert {k: rows[0][k] for k in ("id", "category", "difficulty", "reference")} == \
        {"id": "1", "category": "Math", "difficulty": 1, "reference": None}
    one_each = select_items(rows, per_category=1)
    assert len(one_each) == 29 and len({r["category"] for r in one_each}) == 29
    assert [r["id"] for r in select_items(rows, per_category=2, limit=3)] == ["1", "2", "20"]


BAD_LINES = [
    ('{"qid": "a", "prompt": "Name a prime.", "topic": "math", "gold": "2"}', None),
    ('{"qid": "b", "prompt": "  Why is the sky blue?  "}', None),
    ('{"qid": "c", "prompt": "x", "topic": 7}', None),  # integer category codes are kept as text
    ('not json', MALFORMED_JSON),
    ('[1, 2]', NOT_AN_OBJECT),
    ('{"qid": "d"}', MISSING_INSTRUCTION),
    ('{"qid": "e", "prompt": 42}', INSTRUCTION_NOT_STRING),
    ('{"qid": "f", "prompt": "   "}', EMPTY_INSTRUCTION),
    ('{"qid": "g", "prompt": "ok", "topic": ["a"]}', BAD_CATEGORY),
    ('{"qid": "h", "prompt": "ok", "gold": 3}', BAD_REFERENCE),
    ('{"qid": "a", "prompt": "Same id again."}', DUPLICATE_ID),
    ('{"prompt": "No id: FILE:LINE is used."}', None),
]


def test_every_bad_row_kind_is_quarantined_with_a_reason(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(line for line, _ in BAD_LINES[:6]) + "\n\n" +
                    "\n".join(line for line, _ in BAD_LINES[6:]) + "\n")
    rows = read_testset(str(path), MAPPED)
    assert [r["error"] for r in rows] == [error for _, error in BAD_LINES]
    assert rows[0] | {"source": None} == {
        "id": "a", "instruction": "Name a prime.", "category": "math", "difficulty": None, "reference": "2",
        "source": None, "line": 1, "error": None, "detail": None, "raw": None}
    assert rows[1]["instruction"] == "Why is the sky blue?" and rows[2]["category"] == "7"
    assert rows[10]["detail"] == f"id 'a' first seen at {path}:1"
    assert rows[11]["id"] == f"{path}:13" and rows[11]["line"] == 13  # the blank line is not a row
    assert quarantine_counts(rows) == {BAD_CATEGORY: 1, BAD_REFERENCE: 1, DUPLICATE_ID: 1, EMPTY_INSTRUCTION: 1,
                                       INSTRUCTION_NOT_STRING: 1, MALFORMED_JSON: 1, MISSING_INSTRUCTION: 1,
                                       NOT_AN_OBJECT: 1}
    assert [r["id"] for r in select_items(rows)] == ["a", "b", "c", f"{path}:13"]


@pytest.mark.parametrize("value, error", [(7, None), (7.0, None), (10, None), (0, BAD_DIFFICULTY),
                                          (11, BAD_DIFFICULTY), (6.5, BAD_DIFFICULTY), ("7", BAD_DIFFICULTY),
                                          (True, BAD_DIFFICULTY), (None, None)])
def test_difficulty_must_be_an_integer_from_1_to_10(value, error):
    line = json.dumps({"Instruction": "Do it.", "idx": 1, "Difficulty": value})
    row = parse_testset_file(line.encode(), "t.jsonl", ItemFields())[0]
    assert row["error"] == error
    if error is None:
        assert row["difficulty"] == (int(value) if value is not None else None)


def test_json_array_and_parquet_read_through_the_same_mapping(tmp_path):
    items = [{"qid": 1, "prompt": "One?", "topic": "t"}, {"qid": 2, "prompt": "", "topic": "t"}]
    (tmp_path / "a.json").write_text(json.dumps(items))
    pq.write_table(pa.Table.from_pylist([{"qid": 3, "prompt": "Three?", "topic": "u"}]), tmp_path / "b.parquet")
    (tmp_path / "notes.txt").write_text("ignored")
    rows = read_testset(str(tmp_path), MAPPED)
    assert [(r["id"], r["line"], r["error"]) for r in rows] == \
        [("1", 0, None), ("2", 1, EMPTY_INSTRUCTION), ("3", 0, None)]
    assert parse_testset_file(b"PAR1garbage", "x.parquet", MAPPED)[0]["error"] == UNREADABLE_FILE
    assert parse_testset_file(b"{}", "x.csv", MAPPED)[0]["error"] == UNREADABLE_FILE


def test_missing_or_unsupported_paths_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_testset(str(tmp_path / "nope.jsonl"), MAPPED)
    (tmp_path / "t.csv").write_text("a,b")
    with pytest.raises(UserError, match="is not one of"):
        read_testset(str(tmp_path / "t.csv"), MAPPED)
    with pytest.raises(UserError, match="holds no"):
        read_testset(str(tmp_path), MAPPED)
