"""One request to a model as a row: text or a recorded error, tokens and engine seconds.

Answers and verdicts both go through `ask`, so a request that fails for good (GenerationError)
becomes a row with `error`/`detail` in every stage alike, and the job goes on.
"""
from __future__ import annotations

import asyncio

from eval.judge import RETRY_REMINDER, parse_verdict, to_candidate_baseline
from generation.types import GenerationError, SamplingParams

GENERATION_FAILED = "generation_failed"


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
    return {"id": item["id"], "answer": reply.pop("text")} | reply


async def judge(generator, row: dict, sampling: SamplingParams) -> dict:
    """One verdict for a prompt row (`id`, `order`, `prompt`); an unreadable verdict is asked
    again once with a format reminder (a changed prompt, so greedy decoding can answer
    differently), then recorded as a failure."""
    attempts, first_text = 1, None
    reply = await ask(generator, row["prompt"], sampling)
    verdict = parse_verdict(reply["text"]) if reply["error"] is None else None
    if verdict is not None and verdict.error:
        attempts, first_text = 2, reply["text"]
        retry = await ask(generator, row["prompt"] + RETRY_REMINDER, sampling)
        retry["prompt_tokens"] += reply["prompt_tokens"]
        retry["completion_tokens"] += reply["completion_tokens"]
        retry["seconds"] += reply["seconds"]
        reply = retry
        verdict = parse_verdict(reply["text"]) if reply["error"] is None else None
    scores = (None, None)
    if verdict is not None and verdict.error is None:
        scores = to_candidate_baseline(row["order"], verdict.first, verdict.second)
    return {"id": row["id"], "order": row["order"], "verdict": reply["text"], "first_attempt": first_text,
            "attempts": attempts, "candidate_score": scores[0], "baseline_score": scores[1],
            "rationale": verdict.rationale if verdict and not verdict.error else None,
            "error": reply["error"] or (verdict.error if verdict else None),
            "detail": reply["detail"] or (verdict.detail if verdict else None),
            "prompt_tokens": reply["prompt_tokens"], "completion_tokens": reply["completion_tokens"],
            "seconds": reply["seconds"]}


async def run_all(coroutines) -> list[dict]:
    """Every request of a batch in flight at once: the engine batches them, not the caller."""
    return list(await asyncio.gather(*coroutines))
