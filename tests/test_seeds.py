import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from evol import seeds as S

FIELDS = S.SeedFields(instruction="instruction", input="input", response="output", id="id")


def _jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_good_rows_parse_with_ids_input_and_response():
    rows = S.parse_jsonl(_jsonl('{"id": 7, "instruction": " Add ", "input": "1, 2", "output": "3"}',
                                '{"instruction": "Say hi", "input": ""}'), "/d/seeds.jsonl", FIELDS)
    assert [r["error"] for r in rows] == [None, None]
    assert rows[0]["seed_id"] == "7" and rows[0]["instruction"] == "Add"
    assert rows[0]["input"] == "1, 2" and rows[0]["response"] == "3"
    assert rows[1]["seed_id"] == "/d/seeds.jsonl:2" and rows[1]["input"] is None and rows[1]["response"] is None
    assert rows[1]["line"] == 2


def test_every_bad_row_kind_is_flagged_not_dropped():
    data = _jsonl(
        '{"id": "a", "instruction": "fine"}',
        '{"id": "b", "instruction": "broken"',          # malformed JSON
        '["not", "an", "object"]',                       # not an object
        '{"id": "c", "text": "no instruction field"}',   # missing
        '{"id": "d", "instruction": 42}',                # not a string
        '{"id": "e", "instruction": "   "}',             # empty
        '{"id": "f", "instruction": "ok", "input": 5}',  # bad optional field
        '',                                              # blank line: not a row
        '{"id": "g", "instruction": null}',              # null
    )
    rows = S.parse_jsonl(data, "s.jsonl", FIELDS)
    assert [r["error"] for r in rows] == [None, S.MALFORMED_JSON, S.NOT_AN_OBJECT, S.MISSING_INSTRUCTION,
                                          S.NOT_A_STRING, S.EMPTY_INSTRUCTION, S.BAD_FIELD, S.MISSING_INSTRUCTION]
    assert rows[1]["raw"] == '{"id": "b", "instruction": "broken"' and "Expecting" in rows[1]["detail"]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 9]


def test_json_array_and_parquet_inputs():
    data = json.dumps([{"id": 1, "instruction": "x"}, {"id": 2}]).encode()
    rows = S.parse_seed_file(data, "seeds.json", FIELDS)
    assert [(r["seed_id"], r["error"]) for r in rows] == [("1", None), ("2", S.MISSING_INSTRUCTION)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["p1", "p2"], "instruction": ["Do A", ""]}), buf)
    rows = S.parse_seed_file(buf.getvalue(), "seeds.parquet", FIELDS)
    assert [(r["seed_id"], r["error"]) for r in rows] == [("p1", None), ("p2", S.EMPTY_INSTRUCTION)]


def test_whole_file_errors_become_one_quarantined_row():
    assert S.parse_seed_file(b"[1, 2", "bad.json", FIELDS)[0]["error"] == S.MALFORMED_JSON
    assert S.parse_seed_file(b"not parquet", "bad.parquet", FIELDS)[0]["error"] == S.UNREADABLE_FILE
    assert S.parse_seed_file(b"a,b", "x.csv", FIELDS)[0]["error"] == S.UNREADABLE_FILE


def test_duplicates_first_usable_row_in_file_order_wins():
    rows = S.parse_jsonl(_jsonl('{"id": "x", "instruction": ""}', '{"id": "x", "instruction": "first"}',
                                '{"id": "x", "instruction": "second"}'), "s.jsonl", FIELDS)
    marked = S.mark_duplicates(list(reversed(rows)))
    by_line = {r["line"]: r for r in marked}
    assert by_line[1]["error"] == S.EMPTY_INSTRUCTION
    assert by_line[2]["error"] is None
    assert by_line[3]["error"] == S.DUPLICATE_ID and "s.jsonl:2" in by_line[3]["detail"]


def test_seed_table_has_fixed_schema():
    table = S.seed_table(S.parse_jsonl(_jsonl('{"instruction": "x"}'), "s.jsonl", FIELDS))
    assert table.schema.equals(S.SEED_SCHEMA) and table.num_rows == 1


def test_bundled_seed_file_has_175_usable_rows():
    import importlib.resources

    data = (importlib.resources.files("evol") / "data" / "self_instruct_seeds.jsonl").read_bytes()
    rows = S.parse_jsonl(data, "self_instruct_seeds.jsonl", FIELDS)
    assert len(rows) == 175 and all(r["error"] is None for r in rows)
    assert len({r["seed_id"] for r in rows}) == 175
    assert sum(1 for r in rows if r["input"]) > 50 and all(r["response"] for r in rows)
