"""Judged difficulty per evolution round, as in the paper's complexity analysis.

The paper asked a strong model to rate the difficulty and complexity of instructions from each
round and saw it rise round by round. Here the judge rates a fixed sample of kept instructions
per round (chosen by a stable hash of their ids, so reruns rate the same ones) on a 1-10 scale.
An unreadable rating is retried once, then counted as a failure, as with verdicts. Our own prompt.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from eval.judge import read_score

DIFFICULTY_TEMPLATE = """Rate how hard the following instruction is to carry out well: how much knowledge, how many
reasoning steps and how many constraints it takes. Do not carry out the instruction; only rate it.

[Instruction]
{instruction}

Answer with one line, "Difficulty: " and a whole number from 1 (trivial) to 10 (expert level, many steps)."""

DIFFICULTY_PREFILL = "Difficulty:"  # with `judge_prefill`, every rating starts with this

DIFFICULTY_REMINDER = "\n\nYour reply must start with the line 'Difficulty: <number>', the number from 1 to 10."

_DIFFICULTY = re.compile(r"\bdifficulty\s*[:=]\s*\**\s*(\S+(?:\s+out\s+of\s+10)?)", re.IGNORECASE)


@dataclass(frozen=True)
class Rating:
    score: float | None
    error: str | None = None
    detail: str = ""


def difficulty_prompt(instruction: str) -> str:
    return DIFFICULTY_TEMPLATE.format(instruction=instruction)


def parse_difficulty(text: str | None) -> Rating:
    if not text or not text.strip():
        return Rating(None, "empty", "the judge returned no text")
    score, error, detail = read_score(text, _DIFFICULTY, "difficulty")
    return Rating(score, error, detail)


def pick_per_round(rows: list[dict], per_round: int, seed: int = 0) -> list[dict]:
    """At most `per_round` rows (`id`, `round`) of each round: those whose hash of (seed, id) is
    smallest, a uniform sample that a rerun picks again. Sorted by round, then hash."""
    def rank(row: dict) -> str:
        return hashlib.blake2b(f"{seed}:{row['id']}".encode(), digest_size=8).hexdigest()

    by_round: dict[int, list[dict]] = {}
    for row in rows:
        by_round.setdefault(row["round"], []).append(row)
    return [row for r in sorted(by_round) for row in sorted(by_round[r], key=rank)[:per_round]]


def difficulty_by_round(ratings: list[dict]) -> list[dict]:
    """Per round: instructions rated, ratings unreadable, mean judged difficulty of the readable ones."""
    rounds: dict[int, list] = {}
    for rating in ratings:
        rounds.setdefault(rating["round"], []).append(rating["difficulty"])
    out = []
    for r in sorted(rounds):
        scores = [s for s in rounds[r] if s is not None]
        out.append({"round": r, "rated": len(rounds[r]), "failed": len(rounds[r]) - len(scores),
                    "mean": sum(scores) / len(scores) if scores else None})
    return out
