"""Prompt preparation off the event loop: what an actor's loop pays per request, before and after.

    python benchmarks/bench_prompt_prep.py [--prompts 512]

Before this change every request rendered the chat template (jinja) and rebuilt the tokenizer's
special-token texts on the actor's event loop, where vLLM's output handler also runs. Now the template
is rendered once per tokenizer (`generation.prompts.frame_of`), and the tokenising runs in a worker
thread. On the exact evolve and answer prompts of the bundled seeds, with the small model's tokenizer,
this prints, side by side in one run:
1. per prompt: the old path (rebuilt here as it was) vs `prompt_token_ids` now (same ids, checked);
2. the event loop's longest stall while every prompt is prepared at once: on the loop (before) vs in
   a thread (after), measured by a 1 ms ticker on the loop.
"""
from __future__ import annotations

import argparse
import asyncio
import time

from bench_generation_common import bundled_seed_rows
from common.models import SMALL_MODEL_ALIAS, resolve_model
from evol.templates import evolve_prompt, user_turn
from generation.prompts import USER_SLOT, _frame_ids, _special_token_texts, prompt_token_ids, render_prompt


def old_prompt_ids(prompt: str, tokenizer) -> list[int]:
    """prompt_token_ids as it was: the template rendered and the special texts rebuilt per request."""
    text = render_prompt(prompt, "chat", tokenizer)
    if not any(special in prompt for special in _special_token_texts(tokenizer)):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    before, after = render_prompt(USER_SLOT, "chat", tokenizer).split(USER_SLOT)
    return [*_frame_ids(tokenizer, before), *tokenizer([prompt], add_special_tokens=False,
                                                       split_special_tokens=True)["input_ids"][0],
            *_frame_ids(tokenizer, after)]


def per_prompt_us(prepare, prompts) -> float:
    start = time.perf_counter()
    for prompt in prompts:
        prepare(prompt)
    return (time.perf_counter() - start) / len(prompts) * 1e6


async def longest_stall_ms(prepare, prompts, threaded: bool) -> float:
    """Longest gap between ticks of a 1 ms ticker while every prompt is prepared concurrently."""
    stalls, done = [0.0], asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls.append(now - last - 0.001)
            last = now

    async def one(prompt):
        await asyncio.sleep(0)
        return await asyncio.to_thread(prepare, prompt) if threaded else prepare(prompt)

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(one(p) for p in prompts))
    done.set()
    await tick
    return max(stalls) * 1000


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=512)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMALL_MODEL_ALIAS))
    texts = [user_turn(r["instruction"], r["input"]) for r in bundled_seed_rows(args.prompts)]
    prompts = (texts + [evolve_prompt("deepening", t) for t in texts])[:args.prompts]
    new = lambda prompt: prompt_token_ids(prompt, "chat", tokenizer)  # noqa: E731
    old = lambda prompt: old_prompt_ids(prompt, tokenizer)  # noqa: E731
    assert all(new(p) == old(p) for p in prompts), "the cached path must give the same ids"
    before, after = per_prompt_us(old, prompts), per_prompt_us(new, prompts)
    print(f"per prompt ({len(prompts)} prompts, SmolLM2 chat template): before {before:.0f} us, after {after:.0f} us "
          f"({before / after:.2f}x faster)")
    on_loop = asyncio.run(longest_stall_ms(old, prompts, threaded=False))
    threaded = asyncio.run(longest_stall_ms(new, prompts, threaded=True))
    print(f"event loop's longest stall while all are prepared at once: before (on the loop) {on_loop:.1f} ms, "
          f"after (in a thread) {threaded:.1f} ms")


if __name__ == "__main__":
    main()
