"""Aggregation on hand-made score tables whose answers are known."""
import numpy as np
import pytest

from eval.aggregate import aggregate, aggregate_single, band_of, bootstrap_interval, combine_item
from eval.length import length_controlled_win_rate, win_rate


def item(id, cb, bc, category=None, difficulty=None, **extra):
    """cb / bc: (candidate, baseline) scores of that order, or None for a failed verdict."""
    row = {"id": id, "category": category, "difficulty": difficulty, "answer_error": None} | extra
    for order, pair in (("cb", cb), ("bc", bc)):
        row[f"candidate_{order}"], row[f"baseline_{order}"] = pair if pair else (None, None)
        judged = not row["answer_error"]  # no answer: nothing was judged
        row[f"error_{order}"] = "malformed" if judged and not pair else None
        row[f"attempts_{order}"] = (1 if pair else 2) if judged else 0
    return row


def test_item_score_is_the_mean_of_both_orders_and_one_order_counts_only_when_allowed():
    assert combine_item(item("a", (8, 4), (6, 4))) == \
        {"candidate": 7.0, "baseline": 4.0, "outcome": "win", "orders": 2, "disagree": False}
    assert combine_item(item("b", (8, 4), (3, 5))) == \
        {"candidate": 5.5, "baseline": 4.5, "outcome": "win", "orders": 2, "disagree": True}
    assert combine_item(item("c", None, (5, 5))) == \
        {"candidate": None, "baseline": None, "outcome": None, "orders": 1, "disagree": None}
    assert combine_item(item("c", None, (5, 5)), require_both_orders=False) == \
        {"candidate": 5.0, "baseline": 5.0, "outcome": "tie", "orders": 1, "disagree": None}
    assert combine_item(item("d", None, None))["outcome"] is None
    # FastChat's rule: orders that pick different winners make a tie; the scores still count
    assert combine_item(item("b", (8, 4), (3, 5)), disagreement_as_tie=True) == \
        {"candidate": 5.5, "baseline": 4.5, "outcome": "tie", "orders": 2, "disagree": True}


@pytest.mark.parametrize("difficulty, band", [(1, "1-4"), (4, "1-4"), (5, "5-7"), (7, "5-7"), (8, "8-10"),
                                              (10, "8-10"), (None, None), (0, None), (11, None)])
def test_difficulty_bands(difficulty, band):
    assert band_of(difficulty) == band


TABLE = [
    item("m1", (9, 6), (9, 6), "Math", 2),      # win, both orders agree
    item("m2", (6, 6), (6, 6), "Math", 5),      # tie
    item("c1", (4, 8), (4, 8), "Code", 9),      # loss
    item("c2", (8, 2), (2, 8), "Code", 6),      # orders disagree: 5 vs 5, a tie
    item("w1", (10, 5), None, "Writing", 8),    # one readable order: win
    item("w2", None, None, "Writing", 3),       # both verdicts failed: unjudged
    item("x1", None, None, "Writing", 1, answer_error="generation_failed:timeout"),
]


def test_aggregates_of_a_known_table():
    result = aggregate(TABLE, bootstrap_samples=200, seed=1)
    overall = result["overall"]
    # judged items (both orders readable): candidate 9+6+4+5 = 24, baseline 6+6+8+5 = 25; w1 has one order only
    assert overall["ratio"] == pytest.approx(24 / 25)
    assert (overall["n"], overall["win"], overall["tie"], overall["loss"]) == (4, 1, 2, 1)
    # outcomes win, tie, tie, loss: 1, .5, .5, 0; standard error = their sd / sqrt(4)
    assert (overall["win_rate"], overall["win_rate_se"]) == (pytest.approx(0.5), pytest.approx((0.5 / 3) ** 0.5 / 2))
    assert (result["items"], result["judged"], result["unjudged"], result["answer_failures"]) == (7, 4, 2, 1)
    assert result["one_order_only"] == 1
    cats = result["by_category"]
    assert list(cats) == ["Code", "Math"]  # Writing: nothing counted
    assert cats["Math"]["ratio"] == pytest.approx(15 / 12)
    assert cats["Code"]["ratio"] == pytest.approx(9 / 13)
    assert result["categories_at_or_above"] == 1
    bands = result["by_band"]
    assert list(bands) == ["1-4", "5-7", "8-10"]
    assert [(b["n"], b["win"], b["tie"], b["loss"]) for b in bands.values()] == [(1, 1, 0, 0), (2, 0, 2, 0),
                                                                                  (1, 0, 0, 1)]
    assert result["order"]["both_orders"] == 4 and result["order"]["disagree"] == 1
    assert result["order"]["disagreement_rate"] == 0.25
    # candidate minus baseline as judged in each order: cb: 3,0,-4,6 ; bc: 3,0,-4,-6
    assert result["order"]["mean_difference_by_order"] == {"cb": pytest.approx(1.25), "bc": pytest.approx(-1.75)}
    # 12 verdicts (6 items with answers); failed: w1 bc, w2 cb and bc (x1 had no answer to judge)
    assert result["verdicts"]["verdicts"] == 12
    assert result["verdicts"]["failures"] == {"malformed": 3} and result["verdicts"]["retried"] == 3
    low, high = overall["ci"]
    assert low < 24 / 25 < high
    assert result["has_difficulty"] and result["has_categories"]
    # scored on one order when allowed: w1 counts (10 vs 5)
    one = aggregate(TABLE, bootstrap_samples=10, require_both_orders=False)
    assert one["overall"]["ratio"] == pytest.approx(34 / 30) and one["one_order_only"] == 0
    assert one["by_category"]["Writing"]["n"] == 1


def test_no_difficulty_and_no_category_leave_those_views_empty():
    rows = [item("a", (8, 4), (8, 4)), item("b", (4, 8), (4, 8))]
    result = aggregate(rows, bootstrap_samples=50)
    assert result["overall"]["ratio"] == pytest.approx(1.0)
    assert result["by_band"] == {} and not result["has_difficulty"]
    assert result["by_category"] == {} and not result["has_categories"]
    assert result["categories_at_or_above"] == 0


def test_nothing_judged_gives_no_ratio_and_no_interval():
    result = aggregate([item("a", None, None, "Math", 3)])
    assert result["overall"]["ratio"] is None and result["overall"]["ci"] is None
    assert result["judged"] == 0 and result["unjudged"] == 1
    assert result["has_categories"] and result["has_difficulty"]  # the test set has them; nothing to show
    assert result["by_category"] == {} and result["by_band"] == {}


def test_bootstrap_interval_of_a_constant_ratio_is_that_ratio():
    assert bootstrap_interval([2, 4, 6, 8], [1, 2, 3, 4], samples=500) == pytest.approx((2.0, 2.0))


def test_bootstrap_interval_of_a_known_two_item_case():
    # Resampling 2 items (c/b = 1/1 and 3/1): ratios 1 (p=1/4), 2 (p=1/2), 3 (p=1/4).
    # The 2.5% and 97.5% percentiles are therefore 1 and 3; the 25%-75% interval is 2..2.
    assert bootstrap_interval([1, 3], [1, 1], samples=4000, seed=7) == pytest.approx((1.0, 3.0))
    assert bootstrap_interval([1, 3], [1, 1], samples=4000, confidence=0.4, seed=7) == pytest.approx((2.0, 2.0))


def test_bootstrap_is_seeded_and_narrows_with_more_items():
    cand, base = [7, 5, 9, 4, 6, 8] * 5, [6, 6, 7, 5, 6, 6] * 5
    first = bootstrap_interval(cand, base, samples=300, seed=3)
    assert first == bootstrap_interval(cand, base, samples=300, seed=3)
    assert first != bootstrap_interval(cand, base, samples=300, seed=4)
    wide = bootstrap_interval(cand[:6], base[:6], samples=300, seed=3)
    assert (wide[1] - wide[0]) > (first[1] - first[0])
    assert bootstrap_interval([], [], samples=10) is None


def test_position_bias_with_unreadable_second_orders_is_not_a_win():
    """Equal answers (5 vs 5) and a judge that gives the reply shown first 2 more points; half of the
    baseline-first verdicts are unreadable. Scored on its one readable order such an item looks like a
    candidate win (7 vs 5) and the ratio reads 118%; counted only with both orders it is exactly 100%."""
    rows = [item(str(i), (7, 5), (5, 7) if i % 2 else None) for i in range(40)]
    result = aggregate(rows, bootstrap_samples=50)
    assert result["overall"]["ratio"] == pytest.approx(1.0)
    assert result["overall"]["win_rate"] == pytest.approx(0.5) and result["overall"]["n"] == 20
    assert result["one_order_only"] == 20 and result["unjudged"] == 20
    assert aggregate(rows, bootstrap_samples=50, require_both_orders=False)["overall"]["ratio"] == \
        pytest.approx(260 / 220)  # the old rule: 118%
    # FastChat's tie rule: each item's orders disagree (7-5 for the reply shown first): all ties
    ties = aggregate(rows, bootstrap_samples=50, disagreement_as_tie=True)["overall"]
    assert (ties["win"], ties["tie"], ties["loss"]) == (0, 20, 0)


def test_length_controlled_win_rate_removes_a_planted_length_bias():
    """Answers of equal quality; the judge prefers the longer one, P(candidate wins) =
    sigmoid(2 tanh(length difference / its spread)), and the candidate writes longer answers. Its win
    rate is far above 50%; the length-controlled win rate is back at about 50%."""
    rng = np.random.default_rng(0)
    n = 1500
    cand, base = rng.normal(1200, 400, n).clip(20).astype(int), rng.normal(800, 400, n).clip(20).astype(int)
    delta = cand - base
    prefer = 1 / (1 + np.exp(-2 * np.tanh(delta / delta.std())))
    draw = rng.random(n)
    def row(i, wins):  # both orders agree: 7 vs 5 for the winner
        pair = (7, 5) if wins else (5, 7)
        return item(str(i), pair, pair, candidate_answer="c" * cand[i], baseline_answer="b" * base[i])

    rows = [row(i, draw[i] < prefer[i]) for i in range(n)]
    result = aggregate(rows, bootstrap_samples=10)
    assert result["overall"]["win_rate"] > 0.62
    assert result["overall"]["lc_win_rate"] == pytest.approx(0.5, abs=0.04)
    assert result["answers"]["candidate"]["mean_chars"] == pytest.approx(cand.mean())
    assert result["answers"]["baseline"]["mean_chars"] == pytest.approx(base.mean())
    # no length bias planted: the length-controlled win rate stays with the win rate
    fair_result = aggregate([row(i, i % 3) for i in range(n)], bootstrap_samples=10)["overall"]
    assert fair_result["lc_win_rate"] == pytest.approx(fair_result["win_rate"], abs=0.04)


def test_win_rate_counts_ties_as_half_and_equal_lengths_leave_it_as_is():
    assert win_rate(["win", "tie", "loss", "win"]) == (pytest.approx(0.625), pytest.approx(0.4787 / 2, abs=1e-4))
    assert win_rate([]) == (None, None) and win_rate(["win"]) == (1.0, None)
    assert length_controlled_win_rate(["win", "win", "loss", "tie"], [10] * 4, [10] * 4) == pytest.approx(0.625,
                                                                                                         abs=1e-3)
    assert length_controlled_win_rate([], [], []) is None


def test_single_grades_per_role_and_the_paired_ratio_over_items_graded_for_both():
    rows = [{"id": "a", "category": "Math", "difficulty": 2, "candidate_score": 8.0, "baseline_score": 4.0},
            {"id": "b", "category": None, "difficulty": 9, "candidate_score": 6.0, "baseline_score": None,
             "baseline_grade_error": "malformed"},
            {"id": "c", "category": "Math", "difficulty": 5, "candidate_score": 7.0, "baseline_score": 7.0}]
    result = aggregate_single(rows, ("candidate", "baseline"), bootstrap_samples=20)
    assert (result["grades"]["candidate"]["n"], result["grades"]["candidate"]["mean"]) == (3, pytest.approx(7.0))
    assert (result["grades"]["baseline"]["n"], result["grades"]["baseline"]["mean"]) == (2, pytest.approx(5.5))
    assert result["paired"]["n"] == 2 and result["paired"]["ratio"] == pytest.approx(15 / 11)
    assert {k: g["mean"] for k, g in result["by_category"]["candidate"].items()} == {"(no category)": 6.0,
                                                                                     "Math": 7.5}
    assert {k: g["n"] for k, g in result["by_band"]["baseline"].items()} == {"1-4": 1, "5-7": 1}
    assert result["verdicts"]["failures"] == {"malformed": 1}
