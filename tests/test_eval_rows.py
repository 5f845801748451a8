"""Joins between the stages: judge prompts of both orders, and one result row per item."""
from eval.rows import item_rows, judge_rows

ITEMS = [{"id": "a", "instruction": "Q1?", "category": "x", "difficulty": 3, "reference": "R1"},
         {"id": "b", "instruction": "Q2?", "category": "y", "difficulty": None, "reference": None}]
CAND = {"a": {"answer": "cand-a", "error": None}, "b": {"answer": None, "error": "generation_failed:timeout"}}
BASE = {"a": {"answer": "base-a", "error": None}, "b": {"answer": "base-b", "error": None}}


def test_two_prompts_per_answered_item_in_both_orders_with_the_reference():
    rows = judge_rows(ITEMS, CAND, BASE)
    assert [(r["id"], r["order"]) for r in rows] == [("a", "cb"), ("a", "bc")]
    first, second = rows
    assert first["prompt"].index("cand-a") < first["prompt"].index("base-a")
    assert second["prompt"].index("base-a") < second["prompt"].index("cand-a")
    assert "R1" in first["prompt"] and "Q1?" in first["prompt"]


def test_one_row_per_item_with_both_verdicts_and_the_combined_score():
    judgments = [
        {"id": "a", "order": "cb", "verdict": "Score A: 8\nScore B: 6", "first_attempt": None, "attempts": 1,
         "candidate_score": 8.0, "baseline_score": 6.0, "rationale": "", "error": None},
        {"id": "a", "order": "bc", "verdict": "?", "first_attempt": "??", "attempts": 2,
         "candidate_score": None, "baseline_score": None, "rationale": None, "error": "malformed"}]
    a, b = item_rows(ITEMS, CAND, BASE, judgments)
    assert (a["candidate_cb"], a["baseline_cb"], a["candidate_bc"], a["error_bc"], a["first_attempt_bc"]) == \
        (8.0, 6.0, None, "malformed", "??")
    assert (a["candidate_score"], a["baseline_score"], a["outcome"], a["answer_error"]) == (8.0, 6.0, "win", None)
    assert (b["answer_error"], b["outcome"], b["verdict_cb"], b["baseline_answer"]) == \
        ("candidate: generation_failed:timeout", None, None, "base-b")
    assert item_rows(ITEMS[:1], {}, BASE, [])[0]["answer_error"] == "candidate: no answer"


def test_results_arriving_out_of_order_join_by_id():
    judgments = [{"id": "a", "order": o, "verdict": "v", "first_attempt": None, "attempts": 1,
                  "candidate_score": c, "baseline_score": b, "rationale": "", "error": None}
                 for o, c, b in (("cb", 9.0, 5.0), ("bc", 7.0, 5.0))]
    items = list(reversed(ITEMS))
    assert item_rows(items, CAND, BASE, judgments[::-1]) == item_rows(items, CAND, BASE, judgments)
    assert [r["id"] for r in item_rows(items, CAND, BASE, judgments)] == ["b", "a"]  # test-set order kept
    assert item_rows(items, CAND, BASE, judgments)[1]["candidate_score"] == 8.0
