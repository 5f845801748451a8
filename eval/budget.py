"""The judge's prompt budget: its instructions and the question are never cut.

A judge on hf or vllm keeps only the last `max_prompt_tokens` tokens of a prompt, so a prompt that
does not fit would silently lose the judge's instructions, the question and the start of reply A.
Every judge prompt is measured here, on the driver, in the judge's own tokenizer and prompt format.
When it does not fit, the answers are cut to one common length in tokens (an answer shorter than
that stays whole; a cut answer ends with CUT_NOTE, so the judge knows), and the item row and the
report say so. A question that does not fit even with empty answers is not judged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from generation.config import GenerationConfig
from generation.prompts import prompt_token_ids, text_token_ids

CUT_NOTE = "\n[... cut here: the rest of this reply did not fit in the judge's prompt]"
PROMPT_TOO_LONG = "judge_prompt_too_long"
TRUNCATING_BACKENDS = ("hf", "vllm")  # engines that cut prompts to max_prompt_tokens themselves
SEAM_RETRIES = 8  # tokenising the whole prompt can differ from its parts by a token at each seam


@dataclass(frozen=True)
class Measure:
    """How the judge reads text: its prompt limit, the tokens of a whole prompt as its engine gets
    it, and its tokenizer's ids of a text and text of ids (to cut an answer)."""

    limit: int
    prompt_tokens: Callable[[str], int]
    text_ids: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


def common_cap(available: int, lengths: list[int]) -> int:
    """The largest length L with sum(min(n, L)) <= available: the longest answers are cut first, all to L."""
    low, high = 0, max(lengths, default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in lengths) <= available:
            low = mid
        else:
            high = mid - 1
    return low


def fit_answers(build: Callable[[list[str]], list[str]], answers: list[str],
                measure: Measure) -> tuple[list[str], int | None] | None:
    """`build(answers)`: the judge's prompts (e.g. both orders) that show these answers. Returns the
    answers as shown and the common length they were cut to (None: all whole), or None when even
    empty answers leave no room (the question alone is too long)."""
    def tokens(shown: list[str]) -> int:
        return max(measure.prompt_tokens(prompt) for prompt in build(shown))

    if tokens(answers) <= measure.limit:
        return answers, None
    fixed = tokens([CUT_NOTE] * len(answers))
    if fixed >= measure.limit:
        return None
    ids = [measure.text_ids(answer) for answer in answers]
    cap = common_cap(measure.limit - fixed, [len(i) for i in ids])
    for _ in range(SEAM_RETRIES):
        if cap <= 0:  # no room for any of the answers: nothing left to judge
            return None
        shown = [answer if len(i) <= cap else measure.decode(i[:cap]) + CUT_NOTE for answer, i in zip(answers, ids)]
        over = tokens(shown) - measure.limit
        if over <= 0:
            return shown, cap
        cap -= over
    return None


def tokenizer_measure(tokenizer, judge: GenerationConfig, reminder: str = "",
                      prefill: Callable[[str], str] | None = None) -> Measure:
    """The Measure of a judge whose engine tokenises prompts with `tokenizer` in `judge.prompt_format`
    (or, with `prefill`, gets `prefill(prompt)` as raw text). A prompt is measured with the format
    `reminder` that a retry of an unreadable reply appends, so the retry fits too."""
    fmt = "raw" if prefill else judge.prompt_format

    def prompt_tokens(prompt: str) -> int:
        text = prompt + reminder
        return len(prompt_token_ids(prefill(text) if prefill else text, fmt, tokenizer))

    return Measure(judge.max_prompt_tokens, prompt_tokens, lambda text: text_token_ids(tokenizer, [text])[0],
                   tokenizer.decode)
