"""What every job that reads user rows (seeds, test sets) shares: the file kinds it reads, the
quarantine reasons common to all of them, and `bundled:NAME` paths to package data."""
from __future__ import annotations

import importlib.resources

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


def resolve_bundled(path: str, package: str) -> str:
    """`bundled:NAME` is the file NAME in `package`/data; any other path is returned as given."""
    if path.startswith(BUNDLED_PREFIX):
        return str(importlib.resources.files(package) / "data" / path[len(BUNDLED_PREFIX):])
    return path
