"""What every job that reads user rows (seeds, test sets) shares: the file kinds it reads, the
quarantine reasons common to all of them, and `bundled:NAME` paths to package data."""
from __future__ import annotations

import importlib.resources
from typing import Iterator

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
RAW_LIMIT = 500  # characters of a bad row kept for inspection
BUNDLED_PREFIX = "bundled:"

MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_INSTRUCTION = "missing_instruction"
INSTRUCTION_NOT_STRING = "instruction_not_string"
EMPTY_INSTRUCTION = "empty_instruction"
DUPLICATE_ID = "duplicate_id"
UNREADABLE_FILE = "unreadable_file"
BOM = b"\xef\xbb\xbf"


def jsonl_lines(data: bytes, first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the non-blank lines of a jsonl file, split on b"\\n" only: U+2028,
    U+2029 and U+0085 are legal inside JSON strings, and str.splitlines() would cut a row there and
    shift every later line number. A UTF-8 byte order mark opening the file is not part of row 1.
    `first_line` numbers a piece of a larger file (its BOM, if any, was in the first piece)."""
    if first_line == 1:
        data = data.removeprefix(BOM)
    for number, line in enumerate(data.split(b"\n"), start=first_line):
        line = line.removesuffix(b"\r")
        if line.strip():
            yield number, line


def resolve_bundled(path: str, package: str) -> str:
    """`bundled:NAME` is the file NAME in `package`/data; any other path is returned as given."""
    if path.startswith(BUNDLED_PREFIX):
        return str(importlib.resources.files(package) / "data" / path[len(BUNDLED_PREFIX):])
    return path
