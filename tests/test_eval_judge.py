"""The judge's verdict parser and the mapping of both answer orders back to candidate/baseline."""
import asyncio

import pytest

from eval.judge import (AMBIGUOUS, BASELINE_FIRST, CANDIDATE_FIRST, EMPTY, MALFORMED, OUT_OF_RANGE, judge_prompt,
                        ordered_answers, parse_verdict, to_candidate_baseline)
from eval.calls import Prefilled, answer, judge, rate
from generation.types import Generation, GenerationError, SamplingParams


@pytest.mark.parametrize("text, first, second, rationale", [
    ("Score A: 7\nScore B: 4\nReason: A gives the right number.", 7.0, 4.0, "A gives the right number."),
    ("**Score A:** 8/10, **Score B:** 3 out of 10", 8.0, 3.0, ""),
    ("score for reply a = 6.\nscore for reply b = 9.", 6.0, 9.0, ""),
    ("Score A: 7.5\nScore B: 10\nReason: close.\nAgain, Score A: 7.5", 7.5, 10.0, "close.\nAgain, Score A: 7.5"),
    ("Score B: 2\nScore A: 1", 1.0, 2.0, ""),
])
def test_good_verdicts_are_read(text, first, second, rationale):
    verdict = parse_verdict(text)
    assert (verdict.first, verdict.second, verdict.rationale, verdict.error) == (first, second, rationale, None)


@pytest.mark.parametrize("text, error, detail", [
    ("Reply A is better.", MALFORMED, "no 'Score A:' line"),
    ("Score A: 7", MALFORMED, "no 'Score B:' line"),
    ("Score A: seven\nScore B: 3", MALFORMED, "score A is not a number: 'seven'"),
    ("Score A: <1-10>\nScore B: <1-10>", MALFORMED, "score A is not a number: '<1-10>'"),
    ("Score A: 7\nScore B: 3\nScore A: 6", AMBIGUOUS, "score A given as [6.0, 7.0]"),
    ("Score A: 11\nScore B: 3", OUT_OF_RANGE, "score A = 11 is outside 1-10"),
    ("Score A: 5\nScore B: 0", OUT_OF_RANGE, "score B = 0 is outside 1-10"),
    ("Score A: -2\nScore B: 5", OUT_OF_RANGE, "score A = -2 is outside 1-10"),
    ("   \n", EMPTY, "the judge returned no text"),
])
def test_bad_verdicts_are_failures_never_guesses(text, error, detail):
    verdict = parse_verdict(text)
    assert (verdict.first, verdict.second, verdict.error, verdict.detail) == (None, None, error, detail)


def test_both_orders_map_back_to_candidate_and_baseline():
    assert ordered_answers(CANDIDATE_FIRST, "cand", "base") == ("cand", "base")
    assert ordered_answers(BASELINE_FIRST, "cand", "base") == ("base", "cand")
    assert to_candidate_baseline(CANDIDATE_FIRST, 8.0, 3.0) == (8.0, 3.0)
    assert to_candidate_baseline(BASELINE_FIRST, 8.0, 3.0) == (3.0, 8.0)
    with pytest.raises(ValueError):
        to_candidate_baseline("ab", 1.0, 2.0)


def test_prompt_shows_the_answers_in_order_and_the_reference_only_when_given():
    prompt = judge_prompt("What is 2+2?", "four", "five")
    assert prompt.index("four") < prompt.index("five")
    assert "Reference" not in prompt
    assert "the answer is 4" in judge_prompt("What is 2+2?", "four", "five", reference="the answer is 4")


class ScriptedJudge:
    """A fake generator that replies from a script, one reply per call, and records the prompts."""

    model_name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    async def generate(self, prompt, sampling):
        self.prompts.append(prompt)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return Generation(reply, prompt_tokens=10, completion_tokens=5, finished=True, engine_seconds=0.5)

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    async def close(self):
        pass


SAMPLING = SamplingParams(0.0, 1.0, 32)


def test_unreadable_verdict_is_retried_once_with_a_reminder_then_read():
    gen = ScriptedJudge(["A wins.", "Score A: 3\nScore B: 9\nReason: B is right."])
    row = asyncio.run(judge(gen, {"id": "q1", "order": BASELINE_FIRST, "prompt": "P"}, SAMPLING))
    assert len(gen.prompts) == 2 and gen.prompts[1].startswith("P") and gen.prompts[1] != "P"
    assert (row["candidate_score"], row["baseline_score"], row["attempts"], row["error"]) == (9.0, 3.0, 2, None)
    assert (row["first_attempt"], row["prompt_tokens"], row["completion_tokens"], row["seconds"]) == \
        ("A wins.", 20, 10, 1.0)


def test_verdict_unreadable_twice_is_a_failure():
    gen = ScriptedJudge(["A wins.", "Score A: 12\nScore B: 1"])
    row = asyncio.run(judge(gen, {"id": "q1", "order": CANDIDATE_FIRST, "prompt": "P"}, SAMPLING))
    assert (row["candidate_score"], row["baseline_score"], row["attempts"], row["error"]) == \
        (None, None, 2, OUT_OF_RANGE)


def test_failed_requests_are_recorded_not_raised():
    gen = ScriptedJudge([GenerationError("timeout", "no reply in 120 s")])
    row = asyncio.run(judge(gen, {"id": "q1", "order": CANDIDATE_FIRST, "prompt": "P"}, SAMPLING))
    assert (row["error"], row["detail"], row["attempts"], row["candidate_score"]) == \
        ("generation_failed:timeout", "no reply in 120 s", 1, None)
    gen = ScriptedJudge([GenerationError("http_500")])
    row = asyncio.run(answer(gen, {"id": "q2", "instruction": "Say hi."}, SAMPLING))
    assert (row["id"], row["answer"], row["error"]) == ("q2", None, "generation_failed:http_500")


def test_prefill_starts_every_reply_and_the_retry_too():
    """judge_prefill: the plain-format prompt ends with the prefill, the reply holds it, a retry
    (reminder appended to the request, not after the prefill) is prefilled again."""
    inner = ScriptedJudge(["I think", "7\nScore B: 5"])
    row = asyncio.run(judge(Prefilled(inner, "Score A:"), {"id": "q1", "order": BASELINE_FIRST, "prompt": "P"},
                            SAMPLING))
    assert inner.prompts[0] == "P\n\n### Response:\nScore A:"
    assert inner.prompts[1].startswith("P\n\nYour reply must") and inner.prompts[1].endswith("### Response:\nScore A:")
    assert (row["first_attempt"], row["verdict"]) == ("Score A: I think", "Score A: 7\nScore B: 5")
    assert (row["candidate_score"], row["baseline_score"], row["attempts"]) == (5.0, 7.0, 2)
    rating = asyncio.run(rate(Prefilled(ScriptedJudge([" 6"]), "Difficulty:"), {"id": "r", "round": 2,
                                                                               "instruction": "Do X."}, SAMPLING))
    assert (rating["rating"], rating["difficulty"]) == ("Difficulty: 6", 6.0)
