"""Hostile and odd seed input: each bad row is one quarantined row with its reason, nothing else moves."""
import datetime
import decimal
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evol import seeds as S

FIELDS = S.SeedFields(instruction="instruction", input="input", response="output", id="id")


def _lines(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def _summary(rows: list[dict]) -> list[tuple]:
    return [(r["line"], r["seed_id"], r["error"], r["instruction"]) for r in rows]


@pytest.mark.parametrize("nested", [b"[" * 100_000, b'{"instruction": "x", "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_a_deeply_nested_line_is_one_malformed_row(nested):
    rows = S.parse_seed_file(_lines(b'{"id": "a", "instruction": "A"}', nested, b'{"id": "b", "instruction": "B"}'),
                             "s.jsonl", FIELDS)
    assert _summary(rows) == [(1, "a", None, "A"), (2, "s.jsonl:2", S.MALFORMED_JSON, None), (3, "b", None, "B")]
    assert rows[1]["detail"] == "nested too deeply" and rows[1]["raw"] == nested[:S.RAW_LIMIT].decode()


def test_an_int_python_refuses_to_read_is_one_malformed_row():
    rows = S.parse_seed_file(_lines(b'{"instruction": "x", "n": ' + b"1" * 5000 + b"}", b'{"instruction": "y"}'),
                             "s.jsonl", FIELDS)
    assert _summary(rows) == [(1, "s.jsonl:1", S.MALFORMED_JSON, None), (2, "s.jsonl:2", None, "y")]


def test_only_newline_bytes_split_lines():
    # U+2028/U+2029/U+0085 and friends are legal inside JSON strings; str.splitlines() breaks on them.
    text = "one\u2028two\u2029three\u0085four\x0bfive\x0csix\x1cseven"
    data = b"\r\n".join([json.dumps({"id": "a", "instruction": text}, ensure_ascii=False).encode(), b"",
                          b'{"id": "b", "instruction": "B\\r"}', b""])
    assert _summary(S.parse_jsonl(data, "s.jsonl", FIELDS)) == [(1, "a", None, text), (3, "b", None, "B")]


def test_bytes_that_are_not_utf8_quarantine_only_their_row_and_are_kept_escaped():
    data = _lines(b'{"id": "a", "instruction": "caf\xe9 au lait"}', b'{"id": "b", "instruction": "caf\xc3\xa9"}')
    rows = S.parse_jsonl(data, "s.jsonl", FIELDS)
    assert _summary(rows) == [(1, "s.jsonl:1", S.NOT_UTF8, None), (2, "b", None, "café")]
    assert S.NOT_UTF8 == "not_utf8"
    assert rows[0]["raw"] == '{"id": "a", "instruction": "caf\\xe9 au lait"}'
    assert rows[0]["detail"] == "not valid UTF-8 at byte 31: invalid continuation byte"


def test_raw_of_a_long_undecodable_line_is_bounded():
    rows = S.parse_jsonl(b"\xff" * 10_000 + b"\n", "s.jsonl", FIELDS)
    assert rows[0]["error"] == S.NOT_UTF8 and rows[0]["raw"] == "\\xff" * (S.RAW_LIMIT // 4)


def test_a_lone_surrogate_escape_is_quarantined_and_the_table_still_builds():
    data = _lines(b'{"id": "a", "instruction": "x \\ud800 y"}', b'{"id": "b\\udfff", "instruction": "B"}',
                  b'{"id": "c", "instruction": "C \\ud83d\\ude00"}')
    rows = S.parse_jsonl(data, "s.jsonl", FIELDS)
    assert _summary(rows) == [(1, "a", S.NOT_UTF8, None), (2, "b\\udfff", None, "B"), (3, "c", None, "C \U0001F600")]
    assert S.seed_table(rows).num_rows == 3


def test_a_bom_is_tolerated_at_the_start_of_a_file_only():
    bom = b"\xef\xbb\xbf"
    data = bom + _lines(b'{"instruction": "A"}', bom + b'{"instruction": "B"}')
    assert [r["error"] for r in S.parse_seed_file(data, "s.jsonl", FIELDS)] == [None, S.MALFORMED_JSON]
    rows = S.parse_seed_file(bom + b'[{"id": 1, "instruction": "A"}]', "s.json", FIELDS)
    assert _summary(rows) == [(0, "1", None, "A")]


@pytest.mark.parametrize("data, error, detail", [
    (b'[{"instruction": "caf\xe9"}]', S.NOT_UTF8, "not valid UTF-8 at byte 21: invalid continuation byte"),
    (b"[" * 100_000, S.MALFORMED_JSON, "nested too deeply"),
    (b'[{"instruction": "x", "n": ' + b"1" * 5000 + b"}]", S.MALFORMED_JSON,
     "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; "
     "use sys.set_int_max_str_digits() to increase the limit"),
])
def test_a_json_file_that_cannot_be_read_is_one_row(data, error, detail):
    rows = S.parse_seed_file(data, "s.json", FIELDS)
    assert [(r["line"], r["error"], r["detail"]) for r in rows] == [(0, error, detail)]
    assert len(rows[0]["raw"]) <= S.RAW_LIMIT


def test_json_items_with_lone_surrogates_keep_a_printable_raw():
    rows = S.parse_seed_file(b'[{"instruction": "\\udc80"}, {"instruction": "ok", "x": "\\udc80"}]', "s.json", FIELDS)
    assert _summary(rows) == [(0, "s.json:0", S.NOT_UTF8, None), (1, "s.json:1", None, "ok")]
    assert rows[0]["raw"] == '{"instruction": "\\udc80"}'
    assert S.seed_table(rows).num_rows == 2


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_parquet_with_odd_types_is_judged_row_by_row():
    table = pa.table({
        "id": pa.array([decimal.Decimal("1.50"), None, None, None, None], pa.decimal128(5, 2)),
        "instruction": pa.array([b"Do A", b"caf\xe9", b"  ", b"Do D", b"Do E"], pa.binary()),
        "input": pa.array([None, None, None, "ctx", None]).dictionary_encode(),
        "output": pa.array(["a", "b", "c", "d", "e"], pa.large_string()),
        "when": pa.array([10**15, 0, 0, 0, 0], pa.timestamp("s")),  # year ~31.7 million: no datetime holds it
    })
    rows = S.parse_seed_file(_parquet(table), "p.parquet", FIELDS)
    assert _summary(rows) == [(0, "1.50", None, "Do A"), (1, "p.parquet:1", S.NOT_UTF8, None),
                              (2, "p.parquet:2", S.EMPTY_INSTRUCTION, None), (3, "p.parquet:3", None, "Do D"),
                              (4, "p.parquet:4", None, "Do E")]
    assert rows[3]["input"] == "ctx" and rows[4]["response"] == "e"
    assert rows[1]["raw"] == ('{"id": null, "instruction": "b\'caf\\\\xe9\'", "input": null, "output": "b", '
                              '"when": "1970-01-01 00:00:00"}')
    assert S.seed_table(rows).num_rows == 5


def test_parquet_value_python_cannot_hold_spoils_only_its_cell():
    table = pa.table({"instruction": ["A", "B"], "when": pa.array([10**15, 0], pa.timestamp("s"))})
    rows = S.parse_seed_file(_parquet(table), "p.parquet", S.SeedFields())
    assert _summary(rows) == [(0, "p.parquet:0", None, "A"), (1, "p.parquet:1", None, "B")]


_OUT_OF_RANGE = pa.array([10**15, 0], pa.timestamp("s"))  # next to each case: only its own cell is spoiled


@pytest.mark.parametrize("columns, error", [
    ({"instruction": pa.array([1, 2])}, S.NOT_A_STRING),
    ({"instruction": pa.array([None, None], pa.null())}, S.MISSING_INSTRUCTION),
    ({"instruction": ["A", "B"], "input": pa.array([["x"], ["y"]])}, S.BAD_FIELD),
    ({"instruction": pa.array([{"text": "A"}, {"text": "B"}])}, S.NOT_A_STRING),
    ({"instruction": pa.array([datetime.date(2020, 1, 1)] * 2)}, S.NOT_A_STRING),
])
def test_parquet_columns_of_the_wrong_type_quarantine_each_row(columns, error):
    rows = S.parse_seed_file(_parquet(pa.table({**columns, "when": _OUT_OF_RANGE})), "p.parquet", FIELDS)
    assert [(r["line"], r["error"]) for r in rows] == [(0, error), (1, error)]
    assert S.seed_table(rows).num_rows == 2


def test_large_parquet_rows_keep_their_index_across_record_batches():
    n = 70_000
    when = pa.array([0] * (n - 1) + [10**15], pa.timestamp("s"))
    table = pa.table({"instruction": [f"row {i}" for i in range(n)], "when": when})
    rows = S.parse_seed_file(_parquet(table), "p.parquet", S.SeedFields())
    assert len(rows) == n and [r["error"] for r in rows] == [None] * n
    assert (rows[-1]["line"], rows[-1]["instruction"]) == (n - 1, f"row {n - 1}")
    assert rows[-1]["raw"] is None


def test_jsonl_pieces_parse_to_exactly_the_rows_of_the_whole_file():
    data = b"\xef\xbb\xbf" + _lines(
        b'{"instruction": "A"}', b"", json.dumps({"instruction": "B\u2028" + "x" * 300}, ensure_ascii=False).encode(),
        b'{"instruction": "caf\xe9"}', b"[" * 50, b'{"instruction": "E"}') + b'{"instruction": "no newline"}'
    whole = S.parse_jsonl(data, "s.jsonl", FIELDS)
    assert [r["line"] for r in whole] == [1, 3, 4, 5, 6, 7]
    for size in (1, 7, 64, 1000):
        pieces = list(S.jsonl_pieces(io.BytesIO(data), size))
        assert b"".join(piece for _, piece in pieces) == data
        parsed = [row for first, piece in pieces for row in S.parse_jsonl(piece, "s.jsonl", FIELDS, first)]
        assert parsed == whole, size
    with pytest.raises(ValueError, match="piece_bytes must be at least 1"):
        next(S.jsonl_pieces(io.BytesIO(data), 0))


@pytest.mark.parametrize("path, root, name", [
    ("/data/seeds/a/x.jsonl", "/data/seeds", "a/x.jsonl"),
    ("/data/seeds/a/x.jsonl", "/data/seeds/", "a/x.jsonl"),
    ("/data/seeds/x.jsonl", "/data/seeds/x.jsonl", "x.jsonl"),
    ("bucket/seeds/part-0.jsonl", "s3://bucket/seeds", "part-0.jsonl"),
    ("s3://bucket/seeds/b/part-0.jsonl", "s3://bucket/seeds/", "b/part-0.jsonl"),
])
def test_source_name_is_relative_to_the_seeds_path(path, root, name):
    assert S.source_name(path, root) == name


def test_source_name_refuses_a_file_outside_the_seeds_path():
    with pytest.raises(ValueError, match="is not inside"):
        S.source_name("/data/other/x.jsonl", "/data/seeds")
    with pytest.raises(ValueError):
        S.source_name("/data/seeds2/x.jsonl", "/data/seeds")


def test_default_ids_do_not_change_when_the_seeds_folder_moves():
    data = _lines(b'{"instruction": "A"}')
    ids = [S.parse_seed_file(data, S.source_name(f"{root}/a/x.jsonl", root), FIELDS)[0]["seed_id"]
           for root in ("/home/me/seeds", "s3://bucket/team/seeds")]
    assert ids == ["a/x.jsonl:1", "a/x.jsonl:1"]
