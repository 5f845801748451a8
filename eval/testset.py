"""Reading a test set (jsonl / json / parquet, a file or a folder, local or s3://) into item rows.

Pure functions from bytes to rows: every input row becomes exactly one item, either usable or
carrying an `error` code (the quarantine reason) with a `detail`, so that
`rows read = items used + items quarantined` and nothing is silently dropped. An optional field
(category, difficulty, reference) with a bad value is dropped for that row, with the reason in
`dropped`; the row stays. The field mapping lets any test set be used without reshaping it first;
the vendored WizardLM set is the default. A mapped field that no row has is a config error
(`check_mapping`), not a test set without that field.
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from common import storage
from common.config import UserError

from common.rows import (BOM, DUPLICATE_ID, EMPTY_INSTRUCTION, INSTRUCTION_NOT_STRING,  # noqa: F401
                         MALFORMED_JSON, MISSING_INSTRUCTION, NOT_AN_OBJECT, RAW_LIMIT, SUPPORTED_SUFFIXES,
                         UNREADABLE_FILE, jsonl_lines, resolve_bundled)

BAD_CATEGORY = "category_not_text"
BAD_DIFFICULTY = "bad_difficulty"
BAD_REFERENCE = "reference_not_string"
DIFFICULTY_RANGE = (1, 10)

ITEM_SCHEMA = pa.schema([
    ("id", pa.string()), ("instruction", pa.string()), ("category", pa.string()),
    ("difficulty", pa.int64()), ("reference", pa.string()), ("source", pa.string()), ("line", pa.int64()),
    ("error", pa.string()), ("detail", pa.string()), ("dropped", pa.string()), ("raw", pa.string()),
])
# What quarantine.parquet holds of each quarantined row.
QUARANTINE_COLUMNS = ("id", "source", "line", "error", "detail", "raw")


@dataclass(frozen=True)
class ItemFields:
    """Which field of the user's rows holds what; None = the test set has no such field."""

    instruction: str = "Instruction"
    id: str | None = "idx"
    category: str | None = "Skill"
    difficulty: str | None = "Difficulty"
    reference: str | None = None

    def mapped(self) -> dict[str, str]:
        """Config key (testset.<key>) -> field name, for every field the mapping names."""
        names = {"instruction_field": self.instruction, "id_field": self.id, "category_field": self.category,
                 "difficulty_field": self.difficulty, "reference_field": self.reference}
        return {key: name for key, name in names.items() if name is not None}


def _item(source: str, line: int, **values) -> dict:
    """One row; `fields` (not written anywhere) holds the keys its object had, for check_mapping."""
    row = {name: None for name in ITEM_SCHEMA.names} | {"fields": ()}
    row.update(source=source, line=line, **values)
    return row


def _bad(source: str, line: int, item_id: str, error: str, detail: str, raw: str) -> dict:
    return _item(source, line, id=item_id, error=error, detail=detail, raw=raw[:RAW_LIMIT])


def _difficulty(value) -> tuple[int | None, str | None]:
    """(difficulty, problem): an integer 1..10 (7.0 counts as 7); absent is fine, anything else is not."""
    if value is None:
        return None, None
    low, high = DIFFICULTY_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or not low <= value <= high:
        return None, f"difficulty must be an integer {low}-{high}, got {value!r}"
    return int(value), None


def _category(value) -> tuple[str | None, str | None]:
    """Skill names are text; integer category codes are kept as their text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, str):
        return value.strip(), None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    return None, f"category must be text, got {type(value).__name__}"


def validate_item(obj, fields: ItemFields, source: str, line: int, raw: str) -> dict:
    default_id = f"{source}:{line}"
    if not isinstance(obj, dict):
        return _bad(source, line, default_id, NOT_AN_OBJECT, f"expected an object, got {type(obj).__name__}", raw)
    given = obj.get(fields.id) if fields.id else None
    item_id = str(given) if given is not None and given != "" else default_id
    instruction = obj.get(fields.instruction)
    problem = None
    if instruction is None:
        problem = MISSING_INSTRUCTION, f"no field {fields.instruction!r}"
    elif not isinstance(instruction, str):
        problem = INSTRUCTION_NOT_STRING, f"{fields.instruction!r} is {type(instruction).__name__}"
    elif not instruction.strip():
        problem = EMPTY_INSTRUCTION, f"{fields.instruction!r} is blank"
    if problem:
        return _bad(source, line, item_id, *problem, raw) | {"fields": tuple(obj)}
    optional, dropped = _optional_fields(obj, fields)
    return _item(source, line, id=item_id, instruction=instruction.strip(), fields=tuple(obj),
                 dropped="; ".join(dropped) or None, **optional)


def _reference(value) -> tuple[str | None, str | None]:
    if value is None or isinstance(value, str):
        return (value.strip() or None) if value else None, None
    return None, f"reference must be text, got {type(value).__name__}"


def _optional_fields(obj: dict, fields: ItemFields) -> tuple[dict, list[str]]:
    """Category, difficulty and reference of a row; a bad value is dropped with its reason
    (`<reason>: <detail>`), so one bad field costs that field, not the item."""
    values, dropped = {}, []
    for name, field, read, reason in (("category", fields.category, _category, BAD_CATEGORY),
                                      ("difficulty", fields.difficulty, _difficulty, BAD_DIFFICULTY),
                                      ("reference", fields.reference, _reference, BAD_REFERENCE)):
        values[name], why = read(obj.get(field) if field else None)
        if why:
            dropped.append(f"{reason}: {why}")
    return values, dropped


def _parse_jsonl(data: bytes, source: str, fields: ItemFields) -> list[dict]:
    rows = []
    for number, line in jsonl_lines(data):
        text = line.decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rows.append(_bad(source, number, f"{source}:{number}", MALFORMED_JSON, str(exc), text))
            continue
        rows.append(validate_item(obj, fields, source, number, text))
    return rows


def _parse_json(data: bytes, source: str, fields: ItemFields) -> list[dict]:
    """A .json file holds one list of objects; `line` is the item's index in it."""
    text = data.removeprefix(BOM).decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return [_bad(source, 0, f"{source}:0", MALFORMED_JSON, str(exc), text)]
    items = obj if isinstance(obj, list) else [obj]
    return [validate_item(item, fields, source, index, json.dumps(item, ensure_ascii=False))
            for index, item in enumerate(items)]


def _parse_parquet(data: bytes, source: str, fields: ItemFields) -> list[dict]:
    table = pq.read_table(io.BytesIO(data))
    return [validate_item(item, fields, source, index, json.dumps(item, ensure_ascii=False, default=str))
            for index, item in enumerate(table.to_pylist())]


def parse_testset_file(data: bytes, source: str, fields: ItemFields) -> list[dict]:
    suffix = os.path.splitext(source)[1].lower()
    parser = {".jsonl": _parse_jsonl, ".ndjson": _parse_jsonl, ".json": _parse_json,
              ".parquet": _parse_parquet}.get(suffix)
    if parser is None:
        return [_bad(source, 0, f"{source}:0", UNREADABLE_FILE,
                     f"unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}", "")]
    try:
        return parser(data, source, fields)
    except Exception as exc:  # a corrupt parquet file is one quarantined row, not a crash
        return [_bad(source, 0, f"{source}:0", UNREADABLE_FILE, f"{type(exc).__name__}: {exc}", "")]


def mark_duplicates(rows: list[dict]) -> list[dict]:
    """Rows sharing an id: the first usable one in file order is the item, later ones are quarantined
    (answers and verdicts are keyed by id, so two items with one id would mix their results)."""
    first: dict[str, dict] = {}
    out = []
    for row in rows:
        if row["error"] is None:
            winner = first.setdefault(row["id"], row)
            if winner is not row:
                row = dict(row, error=DUPLICATE_ID,
                           detail=f"id {row['id']!r} first seen at {winner['source']}:{winner['line']}")
        out.append(row)
    return out


def select_items(rows: list[dict], limit: int | None = None, per_category: int | None = None) -> list[dict]:
    """The usable items to evaluate, in file order: at most `per_category` of each category
    (a small slice that still covers every skill), then at most `limit` in all."""
    seen: dict[str | None, int] = {}
    chosen = []
    for row in rows:
        if row["error"] is not None:
            continue
        seen[row["category"]] = seen.get(row["category"], 0) + 1
        if per_category is None or seen[row["category"]] <= per_category:
            chosen.append(row)
    return chosen[:limit] if limit is not None else chosen


def quarantine_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        if row["error"] is not None:
            counts[row["error"]] = counts.get(row["error"], 0) + 1
    return dict(sorted(counts.items()))


def dropped_counts(rows: list[dict]) -> dict[str, int]:
    """Fields dropped from usable rows, by reason (a row may drop several)."""
    counts: dict[str, int] = {}
    for row in rows:
        for entry in (row["dropped"] or "").split("; ") if row["error"] is None else ():
            if entry:
                reason = entry.split(":", 1)[0]
                counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def quarantine_table(rows: list[dict]) -> pa.Table:
    """The quarantined rows with their reasons (quarantine.parquet)."""
    schema = pa.schema([ITEM_SCHEMA.field(name) for name in QUARANTINE_COLUMNS])
    return pa.Table.from_pylist([row for row in rows if row["error"] is not None], schema=schema)


def check_mapping(rows: list[dict], fields: ItemFields, path: str) -> None:
    """Every field the mapping names is in at least one row, or the mapping is wrong (a typo would
    otherwise read as 'the test set has no category field')."""
    seen = {key for row in rows for key in row["fields"]}
    if not seen:
        return  # no row could be read as an object: the quarantine says why
    for key, name in fields.mapped().items():
        if name not in seen:
            shown = ", ".join(repr(k) for k in sorted(seen)[:12]) + (", ..." if len(seen) > 12 else "")
            raise UserError(f"testset.{key}: no row of {path} has a field {name!r} (its rows have {shown}); "
                            f"set testset.{key} to the right name" + ("" if key == "instruction_field" else
                                                                        " or null"))


def items_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


def resolve_testset_path(path: str) -> str:
    """`bundled:NAME` is a file of eval/data (the vendored WizardLM set); anything else as given."""
    return resolve_bundled(path, "eval")


def testset_files(path: str) -> list[str]:
    """The files of a test set: the file itself, or the supported files of a folder."""
    if not storage.exists(path):
        raise UserError(f"testset.path: {path} does not exist")
    if not storage.is_dir(path):
        if not path.lower().endswith(SUPPORTED_SUFFIXES):
            raise UserError(f"testset.path: {path} is not one of {', '.join(SUPPORTED_SUFFIXES)}")
        return [path]
    files = [f for f in storage.list_files(path) if f.lower().endswith(SUPPORTED_SUFFIXES)]
    if not files:
        raise UserError(f"testset.path: {path} holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
    return files


def read_testset(path: str, fields: ItemFields) -> list[dict]:
    """Every row of every file, validated, duplicates marked. Test sets are small (hundreds to
    thousands of rows), so the driver reads them; the models run in actor pools."""
    rows = []
    for file in testset_files(path):
        filesys, inner = storage.filesystem(file)
        with filesys.open_input_stream(inner) as stream:
            rows.extend(parse_testset_file(stream.read(), file, fields))
    return mark_duplicates(rows)
