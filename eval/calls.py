"""One request to a model as a row: text or a recorded error, tokens and engine seconds.

Answers and verdicts both go through `ask`, so a request that fails for good (GenerationError)
becomes a row with `error`/`detail` in every stage alike, and the job goes on.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace

from eval.difficulty import DIFFICULTY_REMINDER, difficulty_prompt, parse_difficulty
from eval.judge import GRADE_REMINDER, RETRY_REMINDER, parse_grade, parse_verdict, to_candidate_baseline
from generation.prompts import PLAIN_TEMPLATE
from generation.types import Generation, GenerationError, SamplingParams

GENERATION_FAILED = "generation_failed"


def prefilled(prompt: str, prefill: str) -> str:
    """The text a prefilled request sends as is: the plain format, then the reply's start."""
    return f"{PLAIN_TEMPLATE.format(prompt=prompt)}\n{prefill}"


class Prefilled:
    """A generator whose every reply starts with `prefill` (e.g. 'Score A:'): the prompt is put in
    the plain format here, the prefill on the line after '### Response:', and sent to a generator built with
    prompt_format raw. The reply returned holds the prefill, so it is parsed and stored whole.
    This lets a small local judge that ignores the requested format give its scores; the numbers
    are still the model's own, never filled in."""

    def __init__(self, inner, prefill: str):
        self.inner, self.prefill = inner, prefill
        self.model_name = inner.model_name

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        gen = await self.inner.generate(prefilled(prompt, self.prefill), sampling)
        return replace(gen, text=f"{self.prefill} {gen.text.strip()}")

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    async def close(self) -> None:
        await self.inner.close()


async def ask(generator, prompt: str, sampling: SamplingParams) -> dict:
    try:
        gen = await generator.generate(prompt, sampling)
    except GenerationError as exc:
        return {"text": None, "error": f"{GENERATION_FAILED}:{exc.reason}", "detail": exc.detail[:500],
                "prompt_tokens": 0, "completion_tokens": 0, "finished": False, "seconds": 0.0}
    return {"text": gen.text, "error": None, "detail": None, "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens, "finished": gen.finished, "seconds": gen.engine_seconds}


async def answer(generator, item: dict, sampling: SamplingParams) -> dict:
    """The model's answer to one test item (the instruction is the whole user turn)."""
    reply = await ask(generator, item["instruction"], sampling)
    return {"id": item["id"], "instruction": item["instruction"], "answer": reply.pop("text")} | reply


async def ask_parsed(generator, prompt: str, sampling: SamplingParams, parse, reminder: str):
    """A request whose reply must parse. An unreadable reply is asked again once with a format
    reminder (a changed prompt, so greedy decoding can answer differently), then recorded as a
    failure. Returns (reply row with tokens and seconds of both attempts, `attempts` and
    `first_attempt`; parsed value, None when the request itself failed)."""
    reply = await ask(generator, prompt, sampling) | {"attempts": 1, "first_attempt": None}
    parsed = parse(reply["text"]) if reply["error"] is None else None
    if parsed is not None and parsed.error:
        retry = await ask(generator, prompt + reminder, sampling)
        for key in ("prompt_tokens", "completion_tokens", "seconds"):
            retry[key] += reply[key]
        reply = retry | {"attempts": 2, "first_attempt": reply["text"]}
        parsed = parse(reply["text"]) if reply["error"] is None else None
    if parsed is not None and parsed.error:
        reply |= {"error": parsed.error, "detail": parsed.detail}
    return reply, parsed


async def judge(generator, row: dict, sampling: SamplingParams) -> dict:
    """One verdict for a prompt row (`id`, `order`, `prompt`), scores mapped back to candidate/baseline."""
    reply, verdict = await ask_parsed(generator, row["prompt"], sampling, parse_verdict, RETRY_REMINDER)
    ok = verdict is not None and verdict.error is None
    candidate, baseline = to_candidate_baseline(row["order"], verdict.first, verdict.second) if ok else (None, None)
    return {"id": row["id"], "order": row["order"], "verdict": reply.pop("text"), "candidate_score": candidate,
            "baseline_score": baseline, "rationale": verdict.rationale if ok else None} | reply


async def grade(generator, row: dict, sampling: SamplingParams) -> dict:
    """The judge's 1-10 grade of one answer alone (`id`, `role`, `prompt`): single-answer grading."""
    reply, verdict = await ask_parsed(generator, row["prompt"], sampling, parse_grade, GRADE_REMINDER)
    ok = verdict is not None and verdict.error is None
    return {"id": row["id"], "role": row["role"], "grade": reply.pop("text"), "score": verdict.first if ok else None,
            "rationale": verdict.rationale if ok else None} | reply


async def rate(generator, row: dict, sampling: SamplingParams) -> dict:
    """The judge's difficulty rating (1-10) of one evolved instruction (`id`, `round`, `instruction`)."""
    prompt = difficulty_prompt(row["instruction"])
    reply, rating = await ask_parsed(generator, prompt, sampling, parse_difficulty, DIFFICULTY_REMINDER)
    return {"id": row["id"], "round": row["round"], "rating": reply.pop("text"),
            "difficulty": rating.score if rating is not None and rating.error is None else None} | reply


async def run_all(coroutines) -> list[dict]:
    """Every request of a batch in flight at once: the engine batches them, not the caller."""
    return list(await asyncio.gather(*coroutines))
