"""The judge: our prompts, strict parsers, and both answer orders.

As in the paper's evaluation, a judge model reads one question and two answers and gives each a
score from 1 to 10 with a short reason. Judges favour a position, so every pair is judged twice,
once with the candidate first (order `cb`) and once with the baseline first (order `bc`), and the
scores are mapped back to candidate/baseline. A verdict that does not state both scores plainly
is a failure with a reason, never a guess: a guessed score would move the headline ratio.
Single-answer grading (mode single, as MT-bench) shows one answer and asks for one score.
The prompt texts are our own, written from the paper's description.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CANDIDATE_FIRST, BASELINE_FIRST = "cb", "bc"
ORDERS = (CANDIDATE_FIRST, BASELINE_FIRST)
SCORE_RANGE = (1.0, 10.0)

MALFORMED = "malformed"          # a score line is missing or unreadable
AMBIGUOUS = "ambiguous"          # a score line appears twice with different values
OUT_OF_RANGE = "out_of_range"    # a score outside 1-10
EMPTY = "empty"

JUDGE_TEMPLATE = """You are reviewing two replies written by AI assistants to the same user request.
Judge how helpful, correct, relevant and detailed each reply is for the request. The order in which
the replies are shown says nothing about their quality, and a longer reply is not better by itself.

[Request]
{question}
{reference_block}
[Reply A]
{answer_a}

[Reply B]
{answer_b}

Give each reply a whole-number score from 1 (useless) to 10 (excellent). Answer in exactly this form:
Score A: <1-10>
Score B: <1-10>
Reason: <one or two sentences>"""

REFERENCE_BLOCK = "\n[Reference answer, for your guidance]\n{reference}\n"

# Single-answer grading (MT-bench style): one reply, an absolute score. Our own wording.
GRADE_TEMPLATE = """You are reviewing a reply written by an AI assistant to a user request.
Judge how helpful, correct, relevant and detailed the reply is for the request. A longer reply is
not better by itself.

[Request]
{question}
{reference_block}
[Reply]
{answer}

Give the reply a whole-number score from 1 (useless) to 10 (excellent). Answer in exactly this form:
Score: <1-10>
Reason: <one or two sentences>"""

# With `judge_prefill`, every verdict is made to start with this (see eval.calls.Prefilled).
VERDICT_PREFILL = "Score A:"

GRADE_PREFILL = "Score:"  # with `judge_prefill`, every grade is made to start with this

GRADE_REMINDER = "\n\nYour reply must start with the line 'Score: <number>', the number from 1 to 10."

RETRY_REMINDER = ("\n\nYour reply must start with the two lines 'Score A: <number>' and 'Score B: <number>', "
                  "each number from 1 to 10.")

_VALUE = r"[:=]\s*\**\s*(\S+(?:\s+out\s+of\s+10)?)"
_SCORES = {label: re.compile(rf"\bscore\s*(?:for\s*)?(?:reply\s*|answer\s*)?{label}\s*{_VALUE}", re.IGNORECASE)
           for label in "ab"}
_GRADE = re.compile(rf"\bscore\s*{_VALUE}", re.IGNORECASE)  # "Score: 7", never "Score A: 7"
_NUMBER = re.compile(r"^([+-]?\d+(?:\.\d+)?)(?:/10|\s+out\s+of\s+10)?[.,;*]*$", re.IGNORECASE)
_REASON = re.compile(r"^[\s*#>_-]*reason\s*:\s*(.*)", re.IGNORECASE | re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    """Scores of the first and second reply as shown; `error` set (and scores None) on failure."""

    first: float | None
    second: float | None
    rationale: str
    error: str | None = None
    detail: str = ""


def judge_prompt(question: str, answer_a: str, answer_b: str, reference: str | None = None) -> str:
    block = REFERENCE_BLOCK.format(reference=reference) if reference else ""
    return JUDGE_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b, reference_block=block)


def grade_prompt(question: str, answer: str, reference: str | None = None) -> str:
    block = REFERENCE_BLOCK.format(reference=reference) if reference else ""
    return GRADE_TEMPLATE.format(question=question, answer=answer, reference_block=block)


def ordered_answers(order: str, candidate: str, baseline: str) -> tuple[str, str]:
    """The two answers in the position the order shows them (reply A, reply B)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return (candidate, baseline) if order == CANDIDATE_FIRST else (baseline, candidate)


def to_candidate_baseline(order: str, first: float, second: float) -> tuple[float, float]:
    """Scores as shown (A, B) back to (candidate, baseline)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return (first, second) if order == CANDIDATE_FIRST else (second, first)


def _failure(error: str, detail: str, text: str) -> Verdict:
    return Verdict(None, None, text.strip()[:500], error, detail)


def read_score(text: str, pattern: re.Pattern, name: str) -> tuple[float | None, str | None, str]:
    """(score, error, detail) of every `<name>: <value>` match of `pattern` in `text`: all must agree
    and lie in 1-10. Shared by verdicts and difficulty ratings, so both are equally strict."""
    values = []
    for token in pattern.findall(text):
        number = _NUMBER.match(token)
        if number is None:
            return None, MALFORMED, f"{name} is not a number: {token[:40]!r}"
        values.append(float(number.group(1)))
    if not values:
        return None, MALFORMED, f"no '{name[0].upper() + name[1:]}:' line"
    if len(set(values)) > 1:
        return None, AMBIGUOUS, f"{name} given as {sorted(set(values))}"
    low, high = SCORE_RANGE
    if not low <= values[0] <= high:
        return None, OUT_OF_RANGE, f"{name} = {values[0]:g} is outside {low:g}-{high:g}"
    return values[0], None, ""


def parse_verdict(text: str) -> Verdict:
    """Both scores from a judge's reply, or a failure saying why. Accepts light markdown
    (`**Score A:** 7`, `7/10`); rejects missing, repeated-but-different and out-of-range scores."""
    if not text or not text.strip():
        return _failure(EMPTY, "the judge returned no text", text or "")
    scores = []
    for label in "ab":
        score, error, detail = read_score(text, _SCORES[label], f"score {label.upper()}")
        if error:
            return _failure(error, detail, text)
        scores.append(score)
    reason = _REASON.search(text)
    rationale = reason.group(1).strip() if reason else ""
    return Verdict(scores[0], scores[1], rationale[:1000])


def parse_grade(text: str | None) -> Verdict:
    """The one score of a single-answer grade (in `first`), or a failure saying why; as strict as verdicts."""
    if not text or not text.strip():
        return _failure(EMPTY, "the judge returned no text", text or "")
    score, error, detail = read_score(text, _GRADE, "score")
    if error:
        return _failure(error, detail, text)
    reason = _REASON.search(text)
    return Verdict(score, None, (reason.group(1).strip() if reason else "")[:1000])
