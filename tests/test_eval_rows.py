"""Joins between the stages: judge prompts of both orders, and one result row per item."""
from eval.rows import item_rows, judge_rows

ITEMS = [{"id": "a", "instruction": "Q1?", "category": "x", "difficulty": 3, "reference": "R1"},
         {"id": "b", "instruction": "Q2?", "category": "y", "difficulty": None, "reference": None}]
CAND = {"a": {"answer": "cand-a", "error": None, "finished": False, "prompt_tokens": 9, "completion_tokens": 64},
        "b": {"answer": None, "error": "generation_failed:timeout"}}
BASE = {"a": {"answer": "base-a", "error": None, "finished": True, "prompt_tokens": 12, "completion_tokens": 30},
        "b": {"answer": "base-b", "error": None}}


def test_two_prompts_per_answered_item_in_both_orders_with_the_reference():
    rows, fits = judge_rows(ITEMS, CAND, BASE)
    assert [(r["id"], r["order"]) for r in rows] == [("a", "cb"), ("a", "bc")]
    assert fits == {"a": {"cut_to": None}}
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
    a, b = item_rows(ITEMS, {"candidate": CAND, "baseline": BASE}, judgments)
    assert (a["candidate_cb"], a["baseline_cb"], a["candidate_bc"], a["error_bc"], a["first_attempt_bc"]) == \
        (8.0, 6.0, None, "malformed", "??")
    assert (a["candidate_score"], a["outcome"], a["answer_error"]) == (None, None, None)  # one order only
    loose = item_rows(ITEMS, {"candidate": CAND, "baseline": BASE}, judgments, require_both_orders=False)[0]
    assert (loose["candidate_score"], loose["baseline_score"], loose["outcome"]) == (8.0, 6.0, "win")
    # each answer's token counts and whether its token limit cut it go into items.parquet
    assert (a["candidate_finished"], a["candidate_completion_tokens"], a["baseline_finished"],
            a["baseline_prompt_tokens"]) == (False, 64, True, 12)
    assert (b["answer_error"], b["outcome"], b["verdict_cb"], b["baseline_answer"]) == \
        ("candidate: generation_failed:timeout", None, None, "base-b")
    assert item_rows(ITEMS[:1], {"candidate": {}, "baseline": BASE}, [])[0]["answer_error"] == "candidate: no answer"


def test_results_arriving_out_of_order_join_by_id():
    judgments = [{"id": "a", "order": o, "verdict": "v", "first_attempt": None, "attempts": 1,
                  "candidate_score": c, "baseline_score": b, "rationale": "", "error": None}
                 for o, c, b in (("cb", 9.0, 5.0), ("bc", 7.0, 5.0))]
    items, answers = list(reversed(ITEMS)), {"candidate": CAND, "baseline": BASE}
    assert item_rows(items, answers, judgments[::-1]) == item_rows(items, answers, judgments)
    assert [r["id"] for r in item_rows(items, answers, judgments)] == ["b", "a"]  # test-set order kept
    assert item_rows(items, answers, judgments)[1]["candidate_score"] == 8.0
