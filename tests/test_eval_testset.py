"""Test sets through a field mapping: every row becomes one item or one quarantined row with a reason."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import UserError
from eval.testset import (BAD_CATEGORY, BAD_DIFFICULTY, BAD_REFERENCE, DUPLICATE_ID, EMPTY_INSTRUCTION,
                          INSTRUCTION_NOT_STRING, MALFORMED_JSON, MISSING_INSTRUCTION, NOT_AN_OBJECT,
                          UNREADABLE_FILE, ItemFields, check_mapping, dropped_counts, parse_testset_file,
                          quarantine_counts, quarantine_table, read_testset, resolve_testset_path, select_items)

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
    ('{"qid": "g", "prompt": "ok", "topic": ["a"]}', None),  # a bad optional field: dropped, the row kept
    ('{"qid": "h", "prompt": "ok", "gold": 3}', None),
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
        "source": None, "line": 1, "error": None, "detail": None, "dropped": None, "raw": None,
        "fields": ("qid", "prompt", "topic", "gold")}
    assert rows[1]["instruction"] == "Why is the sky blue?" and rows[2]["category"] == "7"
    assert rows[10]["detail"] == f"id 'a' first seen at {path}:1"
    assert rows[11]["id"] == f"{path}:13" and rows[11]["line"] == 13  # the blank line is not a row
    assert quarantine_counts(rows) == {DUPLICATE_ID: 1, EMPTY_INSTRUCTION: 1, INSTRUCTION_NOT_STRING: 1,
                                       MALFORMED_JSON: 1, MISSING_INSTRUCTION: 1, NOT_AN_OBJECT: 1}
    assert [r["id"] for r in select_items(rows)] == ["a", "b", "c", "g", "h", f"{path}:13"]
    assert (rows[8]["category"], rows[8]["dropped"]) == (None, f"{BAD_CATEGORY}: category must be text, got list")
    assert (rows[9]["reference"], rows[9]["dropped"]) == (None, f"{BAD_REFERENCE}: reference must be text, got int")
    assert dropped_counts(rows) == {BAD_CATEGORY: 1, BAD_REFERENCE: 1}
    table = quarantine_table(rows)
    assert table.column_names == ["id", "source", "line", "error", "detail", "raw"]
    assert table.column("error").to_pylist() == [MALFORMED_JSON, NOT_AN_OBJECT, MISSING_INSTRUCTION,
                                                 INSTRUCTION_NOT_STRING, EMPTY_INSTRUCTION, DUPLICATE_ID]
    assert table.column("raw").to_pylist()[0] == "not json"


def test_a_bad_optional_field_drops_the_field_not_the_row():
    lines = [{"Instruction": "Add 2 and 3.", "idx": 1, "Skill": "Math", "Difficulty": "7"},
             {"Instruction": "Name a river.", "idx": 2, "Skill": 3.5, "Difficulty": 4}]
    rows = parse_testset_file("\n".join(json.dumps(line) for line in lines).encode(), "t.jsonl", ItemFields())
    assert [(r["error"], r["category"], r["difficulty"]) for r in rows] == [(None, "Math", None), (None, None, 4)]
    assert rows[0]["dropped"] == f"{BAD_DIFFICULTY}: difficulty must be an integer 1-10, got '7'"
    assert rows[1]["dropped"] == f"{BAD_CATEGORY}: category must be text, got float"


def test_a_mapped_field_found_in_no_row_is_a_config_error_naming_the_key(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "Hi?", "qid": 1, "topic": "x"}) + "\n" +
                    json.dumps({"prompt": "Why?", "qid": 2, "gold": "Because."}) + "\n")
    rows = read_testset(str(path), MAPPED)
    check_mapping(rows, MAPPED, str(path))  # each mapped field is in some row (difficulty is not mapped)
    with pytest.raises(UserError, match=r"^testset.category_field: no row of .* has a field 'Topic' "
                                        r"\(its rows have 'gold', 'prompt', 'qid', 'topic'\)"):
        check_mapping(rows, ItemFields(instruction="prompt", id="qid", category="Topic", difficulty=None), str(path))
    with pytest.raises(UserError, match="testset.difficulty_field: no row"):
        check_mapping(rows, ItemFields(instruction="prompt", id="qid", category="topic"), str(path))


@pytest.mark.parametrize("value, dropped", [(7, None), (7.0, None), (10, None), (0, BAD_DIFFICULTY),
                                            (11, BAD_DIFFICULTY), (6.5, BAD_DIFFICULTY), ("7", BAD_DIFFICULTY),
                                            (True, BAD_DIFFICULTY), (None, None)])
def test_difficulty_must_be_an_integer_from_1_to_10(value, dropped):
    line = json.dumps({"Instruction": "Do it.", "idx": 1, "Difficulty": value})
    row = parse_testset_file(line.encode(), "t.jsonl", ItemFields())[0]
    assert row["error"] is None and (row["dropped"] or "").split(":")[0] == (dropped or "")
    assert row["difficulty"] == (int(value) if value is not None and not dropped else None)


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


def test_line_separators_inside_strings_and_a_byte_order_mark_cost_no_row(tmp_path):
    """U+2028, U+2029 and U+0085 are legal inside JSON strings (json.dumps leaves them with
    ensure_ascii=False) and a file saved by some editors opens with a BOM: neither splits, shifts or
    loses a row, in the test set and in the contamination check that reads the same files."""
    from evol.contamination import read_testset as read_contamination_set

    items = [{"qid": "a", "prompt": "Explain this:\u2028a line separator"}, {"qid": "b", "prompt": "Next\u0085item"},
             {"qid": "c", "prompt": "Para\u2029graph"}, {"qid": "d", "prompt": "Plain"}]
    (tmp_path / "set.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(
        json.dumps(item, ensure_ascii=False) + "\r\n" for item in items).encode())
    rows = read_testset(str(tmp_path / "set.jsonl"), MAPPED)
    assert [(r["id"], r["line"], r["error"], r["instruction"]) for r in rows] == \
        [(item["qid"], line, None, item["prompt"]) for line, item in enumerate(items, start=1)]
    (tmp_path / "array.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(items, ensure_ascii=False).encode())
    assert [r["id"] for r in read_testset(str(tmp_path / "array.json"), MAPPED) if not r["error"]] == list("abcd")
    for name in ("set.jsonl", "array.json"):
        [checked] = read_contamination_set(str(tmp_path / name), ["prompt"], ["qid"], "curation.contamination")
        assert [text for _, text in checked.items] == [item["prompt"] for item in items]
