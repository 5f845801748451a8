"""Row shapes of the evaluate job and the pure joins between its stages.

pairwise: items (test set) + answers of both models → two judge prompts per item → one result row
per item that holds everything: both answers (with their token counts and whether they were cut by
their token limit), both verdicts as written, the parsed scores. single: each answer graded alone,
one row per item with every role's grade. That row is both the aggregation input and a row of
items.parquet.
"""
from __future__ import annotations

from typing import Callable

import pyarrow as pa

from eval.aggregate import combine_item
from eval.budget import PROMPT_TOO_LONG, Measure, fit_answers
from eval.judge import ORDERS, grade_prompt, judge_prompt, ordered_answers

ANSWER_SCHEMA = pa.schema([
    ("id", pa.string()), ("instruction", pa.string()), ("answer", pa.string()), ("error", pa.string()),
    ("detail", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("finished", pa.bool_()), ("seconds", pa.float64()), ("request", pa.string()),
])

JUDGMENT_SCHEMA = pa.schema([
    ("id", pa.string()), ("order", pa.string()), ("verdict", pa.string()), ("first_attempt", pa.string()),
    ("attempts", pa.int64()), ("candidate_score", pa.float64()), ("baseline_score", pa.float64()),
    ("rationale", pa.string()), ("error", pa.string()), ("detail", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("seconds", pa.float64()),
    ("request", pa.string()),
])

GRADE_SCHEMA = pa.schema([
    ("id", pa.string()), ("role", pa.string()), ("grade", pa.string()), ("first_attempt", pa.string()),
    ("attempts", pa.int64()), ("score", pa.float64()), ("rationale", pa.string()), ("error", pa.string()),
    ("detail", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("seconds", pa.float64()), ("request", pa.string()),
])

RATING_SCHEMA = pa.schema([
    ("id", pa.string()), ("round", pa.int64()), ("rating", pa.string()), ("difficulty", pa.float64()),
    ("first_attempt", pa.string()), ("attempts", pa.int64()), ("error", pa.string()), ("detail", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("seconds", pa.float64()),
    ("request", pa.string()),
])

ORDER_FIELDS = ("verdict", "first_attempt", "attempts", "rationale", "error")
GRADE_FIELDS = ("grade", "first_attempt", "attempts", "rationale", "error")
ANSWER_FIELDS = ("finished", "prompt_tokens", "completion_tokens")  # kept per role in items.parquet
ITEM_FIELDS = ("id", "category", "difficulty", "instruction", "reference")


def answer_error(answers: dict[str, dict | None]) -> str | None:
    """Why an item cannot be judged: a missing or failed answer of a role (role -> its answer row)."""
    for role, row in answers.items():
        if row is None:
            return f"{role}: no answer"
        if row["error"]:
            return f"{role}: {row['error']}"
    return None


def _fitted(build: Callable[[list[str]], list[str]], answers: list[str], measure: Measure | None):
    """(answers as shown, fit note for the item row): see eval.budget; (None, note) when nothing fits."""
    if measure is None:
        return answers, {"cut_to": None}
    fitted = fit_answers(build, answers, measure)
    if fitted is None:
        return None, {"error": PROMPT_TOO_LONG}
    return fitted[0], {"cut_to": fitted[1]}


def judge_rows(items: list[dict], candidate: dict[str, dict], baseline: dict[str, dict],
               measure: Measure | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Two prompts per item with both answers (candidate shown first, then baseline shown first),
    both answers cut alike when the judge's prompt would not hold them; and the fit of each item."""
    rows, fits = [], {}
    for item in items:
        cand, base = candidate.get(item["id"]), baseline.get(item["id"])
        if answer_error({"candidate": cand, "baseline": base}):
            continue

        def build(shown: list[str], item=item) -> list[str]:
            return [judge_prompt(item["instruction"], *ordered_answers(order, *shown), item.get("reference"))
                    for order in ORDERS]

        shown, fits[item["id"]] = _fitted(build, [cand["answer"], base["answer"]], measure)
        if shown is not None:
            rows += [{"id": item["id"], "order": order, "prompt": prompt}
                     for order, prompt in zip(ORDERS, build(shown))]
    return rows, fits


def grade_rows(items: list[dict], answers: dict[str, dict[str, dict]],
               measure: Measure | None = None) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    """One grading prompt per answer of every role (`answers`: role -> id -> answer row), each
    answer cut alone when it does not fit; and the fit of each (id, role)."""
    rows, fits = [], {}
    for item in items:
        for role, by_id in answers.items():
            answer = by_id.get(item["id"])
            if answer_error({role: answer}):
                continue

            def build(shown: list[str], item=item) -> list[str]:
                return [grade_prompt(item["instruction"], shown[0], item.get("reference"))]

            shown, fits[(item["id"], role)] = _fitted(build, [answer["answer"]], measure)
            if shown is not None:
                rows.append({"id": item["id"], "role": role, "prompt": build(shown)[0]})
    return rows, fits


def _answer_columns(item_id: str, answers: dict[str, dict[str, dict]]) -> dict:
    row = {}
    for role, by_id in answers.items():
        answer = by_id.get(item_id) or {}
        row[f"{role}_answer"] = answer.get("answer")
        row |= {f"{role}_{name}": answer.get(name) for name in ANSWER_FIELDS}
    return row | {"answer_error": answer_error({role: by_id.get(item_id) for role, by_id in answers.items()})}


def item_rows(items: list[dict], answers: dict[str, dict[str, dict]], judgments: list[dict],
              fits: dict[str, dict] | None = None, require_both_orders: bool = True,
              disagreement_as_tie: bool = False) -> list[dict]:
    """pairwise: one row per item in test-set order; verdict columns are suffixed by order (`_cb`,
    `_bc`); `answers_cut_to`: the length both answers were cut to for the judge (None: whole)."""
    verdicts = {(j["id"], j["order"]): j for j in judgments}
    rows = []
    for item in items:
        row = {key: item[key] for key in ITEM_FIELDS} | _answer_columns(item["id"], answers)
        fit = (fits or {}).get(item["id"], {})
        row |= {"answers_cut_to": fit.get("cut_to"), "judge_error": fit.get("error")}
        for order in ORDERS:
            j = verdicts.get((item["id"], order), {})
            row |= {f"{name}_{order}": j.get(name) for name in ORDER_FIELDS}
            row |= {f"candidate_{order}": j.get("candidate_score"), f"baseline_{order}": j.get("baseline_score")}
        combined = combine_item(row, require_both_orders, disagreement_as_tie)
        rows.append(row | {"candidate_score": combined["candidate"], "baseline_score": combined["baseline"],
                           "outcome": combined["outcome"], "orders_disagree": combined["disagree"]})
    return rows


def grade_item_rows(items: list[dict], answers: dict[str, dict[str, dict]], grades: list[dict],
                    fits: dict[tuple[str, str], dict] | None = None) -> list[dict]:
    """single: one row per item in test-set order; per role its answer, grade as written, score and
    `<role>_cut_to` (the length its answer was cut to for the judge; None: whole)."""
    by_key = {(g["id"], g["role"]): g for g in grades}
    rows = []
    for item in items:
        row = {key: item[key] for key in ITEM_FIELDS} | _answer_columns(item["id"], answers)
        for role in answers:
            g, fit = by_key.get((item["id"], role), {}), (fits or {}).get((item["id"], role), {})
            row |= {f"{role}_{name}" if name == "grade" else f"{role}_grade_{name}": g.get(name)
                    for name in GRADE_FIELDS}
            row |= {f"{role}_score": g.get("score"), f"{role}_cut_to": fit.get("cut_to"),
                    f"{role}_judge_error": fit.get("error")}
        rows.append(row)
    return rows
