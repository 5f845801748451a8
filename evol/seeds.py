"""Reading seed instructions from jsonl / json / parquet bytes into validated seed rows.

Pure functions: every input row becomes exactly one seed row, either usable or carrying an
`error` code (the quarantine reason). Nothing is dropped except blank lines of a jsonl file,
and one hostile row (bad bytes, deep nesting, a value Python cannot hold) affects only itself.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from common.rows import (BOM, DUPLICATE_ID, EMPTY_INSTRUCTION, MALFORMED_JSON,  # noqa: F401
                         MISSING_INSTRUCTION, NOT_AN_OBJECT, RAW_LIMIT, SUPPORTED_SUFFIXES, UNREADABLE_FILE,
                         jsonl_lines)
from common.rows import INSTRUCTION_NOT_STRING as NOT_A_STRING
from evol.records import SEED_SCHEMA

NOT_UTF8 = "not_utf8"
BAD_FIELD = "field_not_string"
TOO_MANY_TOKENS = "too_many_tokens"


@dataclass(frozen=True)
class SeedFields:
    instruction: str = "instruction"
    input: str | None = None
    response: str | None = None
    id: str | None = None


def source_name(path: str, root: str) -> str:
    """The file's path relative to `seeds.path` (its base name when seeds.path is the file).

    Default ids are built from it: moving the seeds keeps their ids (and so the operations
    chosen), and no local path leaks into the published training set. Schemes ("s3://") are
    ignored, as Ray lists s3 files without one.
    """
    file, base = (posixpath.normpath(re.sub(r"^[a-z][a-z0-9+.-]*://", "", p)) for p in (path, root))
    if file == base:
        return posixpath.basename(file)
    if file.startswith(base.rstrip("/") + "/"):
        return file[len(base.rstrip("/")) + 1:]
    raise ValueError(f"{path} is not inside {root}")


def default_seed_id(source: str, line: int) -> str:
    """FILE:LINE, FILE as the caller names it (see `source_name`): two folders may both hold a part-0.jsonl."""
    return f"{source}:{line}"


def _row(source: str, line: int, **values) -> dict:
    row = {name: None for name in SEED_SCHEMA.names}
    row.update(source=source, line=line, **values)
    return row


def _bad(source: str, line: int, error: str, detail: str, raw: str | None, seed_id: str | None = None) -> dict:
    return _row(source, line, seed_id=seed_id or default_seed_id(source, line), error=error, detail=detail,
                raw=None if raw is None else _printable(raw)[:RAW_LIMIT])


def _printable(text: str) -> str:
    """Text Arrow can store: a lone surrogate (JSON "\\ud800") becomes its escape."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _raw_bytes(data: bytes) -> str:
    """Undecodable bytes as \\xNN escapes, the rest as text: the row can be inspected and fixed."""
    return data[:RAW_LIMIT * 4].decode("utf-8", errors="backslashreplace")[:RAW_LIMIT]


def _utf8_problem(data: bytes) -> str | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 at byte {exc.start}: {exc.reason}"
    return None


def _json_problem(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:RAW_LIMIT]


def _raw_json(item) -> str:
    try:
        return _printable(json.dumps(item, ensure_ascii=False, default=str))[:RAW_LIMIT]
    except (ValueError, RecursionError) as exc:  # a 5000-digit int, a deep nest
        return f"<not shown: {_json_problem(exc)}>"


def _text_problem(name: str, value, required: bool) -> tuple[str, str] | None:
    """(error, detail) for a field that is not usable text; absent optional fields are fine."""
    if value is None:
        return (MISSING_INSTRUCTION, f"no field {name!r}") if required else None
    if isinstance(value, bytes):  # binary parquet columns written by tools that do not mark UTF-8
        problem = _utf8_problem(value)
        if problem:
            return NOT_UTF8, f"{name!r} is {problem}"
        value = value.decode("utf-8")
    if not isinstance(value, str):  # numbers are not silently turned into prose
        return (NOT_A_STRING if required else BAD_FIELD), f"{name!r} is {type(value).__name__}"
    if _printable(value) != value:
        return NOT_UTF8, f"{name!r} holds a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    if required and not value.strip():
        return EMPTY_INSTRUCTION, f"{name!r} is blank"
    return None


def _text(value) -> str | None:
    text = value.decode("utf-8") if isinstance(value, bytes) else value
    return text.strip() if text and text.strip() else None


def _given_id(obj: dict, fields: SeedFields) -> str | None:
    value = obj.get(fields.id) if fields.id else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    return None if value is None or value == "" else _printable(str(value))


def validate_record(obj, fields: SeedFields, source: str, line: int, raw: str) -> dict:
    if not isinstance(obj, dict):
        return _bad(source, line, NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}", raw)
    seed_id = _given_id(obj, fields) or default_seed_id(source, line)
    named = [("instruction", fields.instruction, True), ("input", fields.input, False),
             ("response", fields.response, False)]
    for _, name, required in named:
        problem = _text_problem(name, obj.get(name), required) if name else None
        if problem:
            return _bad(source, line, *problem, raw, seed_id=seed_id)
    texts = {key: _text(obj.get(name)) if name else None for key, name, _ in named}
    return _row(source, line, seed_id=seed_id, **texts)


def parse_jsonl_line(line: bytes, source: str, number: int, fields: SeedFields) -> dict:
    problem = _utf8_problem(line)
    if problem:
        return _bad(source, number, NOT_UTF8, problem, _raw_bytes(line))
    text = line.decode("utf-8")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSON syntax, or an int of 5000 digits
        return _bad(source, number, MALFORMED_JSON, _json_problem(exc), text)
    return validate_record(obj, fields, source, number, text)


def parse_jsonl(data: bytes, source: str, fields: SeedFields, first_line: int = 1) -> list[dict]:
    """`first_line` numbers a piece of a larger file (common.rows.jsonl_lines)."""
    return [parse_jsonl_line(line, source, number, fields) for number, line in jsonl_lines(data, first_line)]


def jsonl_pieces(stream: BinaryIO, piece_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(first line number, whole lines of about piece_bytes) of a large jsonl file, so that it is
    parsed piece by piece (`parse_jsonl(piece, source, fields, first_line)`) with exact line numbers."""
    if piece_bytes < 1:
        raise ValueError(f"piece_bytes must be at least 1, got {piece_bytes}")  # read(0) would end at once
    first_line, pending = 1, []
    while block := stream.read(piece_bytes):
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # a line longer than a piece
            pending.append(block)
            continue
        piece = b"".join(pending) + block[:cut]
        pending = [block[cut:]]
        yield first_line, piece
        first_line += piece.count(b"\n")
    rest = b"".join(pending)
    if rest:
        yield first_line, rest


def parse_json_array(data: bytes, source: str, fields: SeedFields) -> list[dict]:
    """A .json file holds one list of objects (or one object); `line` is the item's index."""
    data = data.removeprefix(BOM)
    problem = _utf8_problem(data)
    if problem:
        return [_bad(source, 0, NOT_UTF8, problem, _raw_bytes(data))]
    text = data.decode("utf-8")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return [_bad(source, 0, MALFORMED_JSON, _json_problem(exc), text)]
    items = obj if isinstance(obj, list) else [obj]
    return [validate_record(item, fields, source, index, _raw_json(item)) for index, item in enumerate(items)]


def _column_values(column: pa.Array) -> list:
    """Python values of one column; a value Python cannot hold (a timestamp past year 9999)
    becomes a placeholder, so it spoils its own cell, not the file."""
    try:
        return column.to_pylist()
    except (ArithmeticError, ValueError, pa.ArrowException):
        values = []
        for scalar in column:
            try:
                values.append(scalar.as_py())
            except (ArithmeticError, ValueError, pa.ArrowException):
                values.append(f"<unreadable {scalar.type} value>")
        return values


PARQUET_PIECE_ROWS = 65536


def parquet_pieces(file, source: str, fields: SeedFields, rows_per_piece: int = PARQUET_PIECE_ROWS
                   ) -> Iterator[list[dict]]:
    """The rows of a parquet file (a random-access file object, never read whole), one record
    batch at a time; `line` is the row's index in the file. A file that turns out corrupt ends
    with one unreadable_file row at the index where reading stopped."""
    line = 0
    try:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=rows_per_piece):
            columns = [_column_values(column) for column in batch.columns]
            rows = []
            for values in zip(*columns):
                item = dict(zip(batch.schema.names, values))
                rows.append(validate_record(item, fields, source, line, _raw_json(item)))
                line += 1
            yield rows
    except Exception as exc:
        yield [_bad(source, line, UNREADABLE_FILE, f"{type(exc).__name__}: {exc}"[:RAW_LIMIT], None)]


def parse_parquet(data: bytes, source: str, fields: SeedFields) -> list[dict]:
    return [row for piece in parquet_pieces(io.BytesIO(data), source, fields) for row in piece]


def parse_seed_file(data: bytes, source: str, fields: SeedFields) -> list[dict]:
    suffix = os.path.splitext(source)[1].lower()
    parser = {".jsonl": parse_jsonl, ".ndjson": parse_jsonl, ".json": parse_json_array,
              ".parquet": parse_parquet}.get(suffix)
    if parser is None:
        return [_bad(source, 0, UNREADABLE_FILE,
                     f"unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}", None)]
    try:
        return parser(data, source, fields)
    except Exception as exc:  # a corrupt parquet file is one quarantined row, not a crash
        return [_bad(source, 0, UNREADABLE_FILE, f"{type(exc).__name__}: {exc}"[:RAW_LIMIT], None)]


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
