"""Judged difficulty per round: the strict rating parser, a stable sample per round, the means."""
import pytest

from eval.difficulty import difficulty_by_round, difficulty_prompt, parse_difficulty, pick_per_round


@pytest.mark.parametrize("text, score, error", [
    ("Difficulty: 7", 7.0, None), ("**Difficulty:** 3/10. It is easy.", 3.0, None),
    ("Difficulty: 7\nDifficulty: 8", None, "ambiguous"), ("Difficulty: 0", None, "out_of_range"),
    ("It is hard.", None, "malformed"), ("Difficulty: <1-10>", None, "malformed"), ("", None, "empty"),
])
def test_ratings_are_read_strictly(text, score, error):
    rating = parse_difficulty(text)
    assert (rating.score, rating.error) == (score, error)


def test_prompt_holds_the_instruction():
    assert "Sort these numbers." in difficulty_prompt("Sort these numbers.")


def test_pick_per_round_is_a_stable_sample_of_each_round():
    rows = [{"id": f"r{r}-{i}", "round": r} for r in (2, 0, 1) for i in range(10)]
    picked = pick_per_round(rows, 3, seed=0)
    assert [row["round"] for row in picked] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert picked == pick_per_round(list(reversed(rows)), 3, seed=0)  # order of the input does not matter
    assert picked != pick_per_round(rows, 3, seed=1)
    assert len(pick_per_round(rows, 50)) == 30


def test_mean_difficulty_per_round_counts_unreadable_ratings():
    ratings = [{"round": 1, "difficulty": 4.0}, {"round": 0, "difficulty": 2.0}, {"round": 1, "difficulty": None},
               {"round": 1, "difficulty": 6.0}, {"round": 2, "difficulty": None}]
    assert difficulty_by_round(ratings) == [{"round": 0, "rated": 1, "failed": 0, "mean": 2.0},
                                            {"round": 1, "rated": 3, "failed": 1, "mean": 5.0},
                                            {"round": 2, "rated": 1, "failed": 1, "mean": None}]
