"""Row shapes of the evaluate job and the pure joins between its stages.

items (test set) + answers of both models → two judge prompts per item → one result row per item
that holds everything: both answers, both verdicts as written, the parsed scores. That row is
both the aggregation input and a row of items.parquet.
"""
from __future__ import annotations

import pyarrow as pa

from eval.aggregate import combine_item
from eval.judge import ORDERS, judge_prompt, ordered_answers

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

RATING_SCHEMA = pa.schema([
    ("id", pa.string()), ("round", pa.int64()), ("rating", pa.string()), ("difficulty", pa.float64()),
    ("first_attempt", pa.string()), ("attempts", pa.int64()), ("error", pa.string()), ("detail", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("seconds", pa.float64()),
    ("request", pa.string()),
])

ORDER_FIELDS = ("verdict", "first_attempt", "attempts", "rationale", "error")


def answer_error(candidate: dict | None, baseline: dict | None) -> str | None:
    """Why an item cannot be judged: a missing or failed answer of either model."""
    for role, row in (("candidate", candidate), ("baseline", baseline)):
        if row is None:
            return f"{role}: no answer"
        if row["error"]:
            return f"{role}: {row['error']}"
    return None


def judge_rows(items: list[dict], candidate: dict[str, dict], baseline: dict[str, dict]) -> list[dict]:
    """Two prompts per item with both answers: candidate shown first, then baseline shown first."""
    rows = []
    for item in items:
        cand, base = candidate.get(item["id"]), baseline.get(item["id"])
        if answer_error(cand, base):
            continue
        for order in ORDERS:
            first, second = ordered_answers(order, cand["answer"], base["answer"])
            rows.append({"id": item["id"], "order": order,
                         "prompt": judge_prompt(item["instruction"], first, second, item.get("reference"))})
    return rows


def item_rows(items: list[dict], candidate: dict[str, dict], baseline: dict[str, dict],
              judgments: list[dict]) -> list[dict]:
    """One row per item in test-set order; verdict columns are suffixed by order (`_cb`, `_bc`)."""
    verdicts = {(j["id"], j["order"]): j for j in judgments}
    rows = []
    for item in items:
        cand, base = candidate.get(item["id"]) or {}, baseline.get(item["id"]) or {}
        row = {key: item[key] for key in ("id", "category", "difficulty", "instruction", "reference")}
        row |= {"candidate_answer": cand.get("answer"), "baseline_answer": base.get("answer"),
                "answer_error": answer_error(cand or None, base or None)}
        for order in ORDERS:
            j = verdicts.get((item["id"], order), {})
            row |= {f"{name}_{order}": j.get(name) for name in ORDER_FIELDS}
            row |= {f"candidate_{order}": j.get("candidate_score"), f"baseline_{order}": j.get("baseline_score")}
        combined = combine_item(row)
        rows.append(row | {"candidate_score": combined["candidate"], "baseline_score": combined["baseline"],
                           "outcome": combined["outcome"], "orders_disagree": combined["disagree"]})
    return rows
