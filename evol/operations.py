"""The six evolution operations and the reproducible per-row choice among them."""
from __future__ import annotations

import hashlib

IN_DEPTH = ("add_constraints", "deepening", "concretizing", "increase_reasoning", "complicate_input")
IN_BREADTH = ("in_breadth",)
OPERATIONS = IN_DEPTH + IN_BREADTH


def stable_hash(*parts: object) -> int:
    """A hash that is the same on every machine and Python process (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def choose_operation(seed: int, row_id: str, round_index: int, operations: tuple[str, ...] = OPERATIONS) -> str:
    """Uniform choice that depends only on (seed, row, round): reruns and reorderings agree."""
    return operations[stable_hash(seed, row_id, round_index) % len(operations)]
