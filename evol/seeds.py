"""Reading seed instructions from jsonl / json / parquet bytes into validated seed rows.

Pure functions: every input row becomes exactly one seed row, either usable or carrying an
`error` code (the quarantine reason). Nothing is dropped except blank lines of a jsonl file.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from evol.records import SEED_SCHEMA

MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_INSTRUCTION = "missing_instruction"
NOT_A_STRING = "instruction_not_string"
EMPTY_INSTRUCTION = "empty_instruction"
BAD_FIELD = "field_not_string"
DUPLICATE_ID = "duplicate_id"
TOO_MANY_TOKENS = "too_many_tokens"
UNREADABLE_FILE = "unreadable_file"

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
RAW_LIMIT = 500


@dataclass(frozen=True)
class SeedFields:
    instruction: str = "instruction"
    input: str | None = None
    response: str | None = None
    id: str | None = None


def default_seed_id(source: str, line: int) -> str:
    """FILE:LINE with the whole path: two folders may both hold a part-0.jsonl."""
    return f"{source}:{line}"


def _row(source: str, line: int, **values) -> dict:
    row = {name: None for name in SEED_SCHEMA.names}
    row.update(source=source, line=line, **values)
    return row


def _optional_text(value) -> tuple[str | None, bool]:
    """(text, ok): absent or null is fine; numbers are not silently turned into prose."""
    if value is None:
        return None, True
    return (value, True) if isinstance(value, str) else (None, False)


def validate_record(obj, fields: SeedFields, source: str, line: int, raw: str) -> dict:
    default_id = default_seed_id(source, line)
    if not isinstance(obj, dict):
        return _row(source, line, seed_id=default_id, error=NOT_AN_OBJECT, raw=raw[:RAW_LIMIT],
                    detail=f"expected a JSON object, got {type(obj).__name__}")
    given_id = obj.get(fields.id) if fields.id else None
    seed_id = str(given_id) if given_id is not None and given_id != "" else default_id
    base = dict(seed_id=seed_id, raw=raw[:RAW_LIMIT])
    if fields.instruction not in obj or obj[fields.instruction] is None:
        return _row(source, line, **base, error=MISSING_INSTRUCTION, detail=f"no field {fields.instruction!r}")
    instruction = obj[fields.instruction]
    if not isinstance(instruction, str):
        return _row(source, line, **base, error=NOT_A_STRING,
                    detail=f"{fields.instruction!r} is {type(instruction).__name__}")
    if not instruction.strip():
        return _row(source, line, **base, error=EMPTY_INSTRUCTION, detail=f"{fields.instruction!r} is blank")
    extra = {}
    for key, name in (("input", fields.input), ("response", fields.response)):
        text, ok = _optional_text(obj.get(name)) if name else (None, True)
        if not ok:
            return _row(source, line, **base, error=BAD_FIELD, detail=f"{name!r} is {type(obj[name]).__name__}")
        extra[key] = text.strip() if text and text.strip() else None
    return _row(source, line, seed_id=seed_id, instruction=instruction.strip(), **extra)


def parse_jsonl(data: bytes, source: str, fields: SeedFields) -> list[dict]:
    rows = []
    for number, raw_line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw_line.strip():
            continue
        try:
            obj = json.loads(raw_line)
        except json.JSONDecodeError as exc:
            rows.append(_row(source, number, seed_id=default_seed_id(source, number),
                             error=MALFORMED_JSON, detail=str(exc), raw=raw_line[:RAW_LIMIT]))
            continue
        rows.append(validate_record(obj, fields, source, number, raw_line))
    return rows


def parse_json_array(data: bytes, source: str, fields: SeedFields) -> list[dict]:
    """A .json file holds one list of objects (or one object); `line` is the item's index."""
    text = data.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return [_row(source, 0, seed_id=default_seed_id(source, 0), error=MALFORMED_JSON,
                     detail=str(exc), raw=text[:RAW_LIMIT])]
    items = obj if isinstance(obj, list) else [obj]
    return [validate_record(item, fields, source, index, json.dumps(item, ensure_ascii=False))
            for index, item in enumerate(items)]


def parse_parquet(data: bytes, source: str, fields: SeedFields) -> list[dict]:
    table = pq.read_table(io.BytesIO(data))
    return [validate_record(item, fields, source, index, json.dumps(item, ensure_ascii=False, default=str))
            for index, item in enumerate(table.to_pylist())]


def parse_seed_file(data: bytes, source: str, fields: SeedFields) -> list[dict]:
    suffix = os.path.splitext(source)[1].lower()
    parser = {".jsonl": parse_jsonl, ".ndjson": parse_jsonl, ".json": parse_json_array,
              ".parquet": parse_parquet}.get(suffix)
    if parser is None:
        return [_row(source, 0, seed_id=default_seed_id(source, 0), error=UNREADABLE_FILE,
                     detail=f"unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")]
    try:
        return parser(data, source, fields)
    except Exception as exc:  # a corrupt parquet file is one quarantined row, not a crash
        return [_row(source, 0, seed_id=default_seed_id(source, 0), error=UNREADABLE_FILE,
                     detail=f"{type(exc).__name__}: {exc}"[:RAW_LIMIT])]


def seed_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SEED_SCHEMA)


def mark_duplicates(rows: list[dict]) -> list[dict]:
    """Rows sharing a seed_id: the first usable one (in file order) wins, later ones are bad."""
    rows = sorted(rows, key=lambda r: (r["source"], r["line"]))
    first: dict[str, dict] = {}
    out = []
    for row in rows:
        if row["error"] is None:
            winner = first.setdefault(row["seed_id"], row)
            if winner is not row:
                row = dict(row, error=DUPLICATE_ID, detail=f"id {row['seed_id']!r} first seen at "
                                                          f"{winner['source']}:{winner['line']}")
        out.append(row)
    return out
