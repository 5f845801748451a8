"""Aggregation on hand-made score tables whose answers are known."""
import pytest

from eval.aggregate import aggregate, band_of, bootstrap_interval, combine_item


def item(id, cb, bc, category=None, difficulty=None, **extra):
    """cb / bc: (candidate, baseline) scores of that order, or None for a failed verdict."""
    row = {"id": id, "category": category, "difficulty": difficulty, "answer_error": None} | extra
    for order, pair in (("cb", cb), ("bc", bc)):
        row[f"candidate_{order}"], row[f"baseline_{order}"] = pair if pair else (None, None)
        judged = not row["answer_error"]  # no answer: nothing was judged
        row[f"error_{order}"] = "malformed" if judged and not pair else None
        row[f"attempts_{order}"] = (1 if pair else 2) if judged else 0
    return row


def test_item_score_is_the_mean_of_its_readable_orders():
    assert combine_item(item("a", (8, 4), (6, 4))) == \
        {"candidate": 7.0, "baseline": 4.0, "outcome": "win", "orders": 2, "disagree": False}
    assert combine_item(item("b", (8, 4), (3, 5))) == \
        {"candidate": 5.5, "baseline": 4.5, "outcome": "win", "orders": 2, "disagree": True}
    assert combine_item(item("c", None, (5, 5))) == \
        {"candidate": 5.0, "baseline": 5.0, "outcome": "tie", "orders": 1, "disagree": None}
    assert combine_item(item("d", None, None))["outcome"] is None


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
    # judged items: candidate 9+6+4+5+10 = 34, baseline 6+6+8+5+5 = 30
    assert overall["ratio"] == pytest.approx(34 / 30)
    assert (overall["n"], overall["win"], overall["tie"], overall["loss"]) == (5, 2, 2, 1)
    assert (result["items"], result["judged"], result["unjudged"], result["answer_failures"]) == (7, 5, 1, 1)
    cats = result["by_category"]
    assert list(cats) == ["Code", "Math", "Writing"]
    assert cats["Math"]["ratio"] == pytest.approx(15 / 12)
    assert cats["Code"]["ratio"] == pytest.approx(9 / 13)
    assert cats["Writing"]["ratio"] == pytest.approx(2.0) and cats["Writing"]["n"] == 1
    assert result["categories_at_or_above"] == 2
    bands = result["by_band"]
    assert list(bands) == ["1-4", "5-7", "8-10"]
    assert [(b["n"], b["win"], b["tie"], b["loss"]) for b in bands.values()] == [(1, 1, 0, 0), (2, 0, 2, 0),
                                                                                  (2, 1, 0, 1)]
    assert result["order"]["both_orders"] == 4 and result["order"]["disagree"] == 1
    assert result["order"]["disagreement_rate"] == 0.25
    # candidate minus baseline as judged in each order: cb: 3,0,-4,6,5 ; bc: 3,0,-4,-6
    assert result["order"]["mean_difference_by_order"] == {"cb": pytest.approx(2.0), "bc": pytest.approx(-1.75)}
    # 12 verdicts (6 items with answers); failed: w1 bc, w2 cb and bc (x1 had no answer to judge)
    assert result["verdicts"]["verdicts"] == 12
    assert result["verdicts"]["failures"] == {"malformed": 3} and result["verdicts"]["retried"] == 3
    low, high = overall["ci"]
    assert low < 34 / 30 < high
    assert result["has_difficulty"] and result["has_categories"]


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
