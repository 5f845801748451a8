"""Constrained answers: how each backend picks one of a fixed set of options, as pure functions.

- hf and vllm score every option as a continuation of the prompt and pick the likeliest:
  log P(option | prompt), summed over the option's tokens (hf: one forward pass, options that
  extend one another sharing a row: `shared_rows`; vllm: prompt logprobs). No decoding loop; the margin is exact.
- openai asks for a JSON object whose `answer` is one of the options (`response_format` with a
  JSON schema) where the server supports it, with `top_logprobs` where it offers them (the margin
  is then read at the answer's first token); a server that offers logprobs but no schema answers
  in free text and its first token's logprobs decide; with neither, the free text comes back
  (method TEXT) for the caller's own parser.
- echo picks the last option (a dry run).
"""
from __future__ import annotations

import json
import re
from typing import Sequence

from generation.prompts import text_token_ids

LOGPROBS, JSON_SCHEMA, TEXT, CANNED = "logprobs", "json_schema", "text", "canned"
METHODS = (LOGPROBS, JSON_SCHEMA, TEXT, CANNED)
TOP_LOGPROBS = 5  # alternatives asked for per token from an OpenAI-compatible server

# One generated token as the server reports it: (text, logprob, [(alternative text, logprob), ...]).
Token = tuple[str, float, list[tuple[str, float]]]


def option_text(option: str, prompt_format: str) -> str:
    """The option as the model would write it: right after the chat template's assistant header, or
    after a space in the plain format ("### Response: Equal")."""
    return f" {option}" if prompt_format == "plain" else option


def option_token_ids(tokenizer, options: Sequence[str], prompt_format: str) -> list[list[int]]:
    """Each option's ids as the continuation of a rendered prompt (plain text, like user text)."""
    return text_token_ids(tokenizer, [option_text(o, prompt_format) for o in options])


def shared_rows(tails: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """How to score options after one prompt in as few rows as one forward pass needs: a row is the
    prompt and then some option's tokens but its last (those predict its tokens), and an option whose
    tokens but its last begin that row's is read off it. Returns each row's tokens after the prompt and,
    per option, its row. The equality check's ["Equal"] and ["Not", " Equal"]: one row, ["Not"] (a row
    per option read the prompt twice)."""
    rows: list[list[int]] = []
    where = [0] * len(tails)
    for i in sorted(range(len(tails)), key=lambda i: -len(tails[i])):  # longest first: shorter ones ride on it
        context = list(tails[i][:-1])
        found = next((r for r, row in enumerate(rows) if row[:len(context)] == context), None)
        if found is None:
            found = len(rows)
            rows.append(context)
        where[i] = found
    return rows, where


def pick(options: Sequence[str], scores: Sequence[float]) -> tuple[str, float | None]:
    """The best-scoring option (the first of equals) and its lead over the best other one."""
    best = max(range(len(options)), key=lambda i: (scores[i], -i))
    others = [s for i, s in enumerate(scores) if i != best]
    return options[best], (scores[best] - max(others)) if others else None


def response_format(options: Sequence[str]) -> dict:
    """OpenAI's structured-output request: {"answer": one of the options}."""
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": list(options)}},
              "required": ["answer"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "choice", "strict": True, "schema": schema}}


_ANSWER_VALUE = re.compile(r'"answer"\s*:\s*"')


def json_answer(text: str, options: Sequence[str]) -> tuple[str, int] | None:
    """(option, offset of its first character in `text`) from a {"answer": ...} reply, or None when
    the reply is not that object (a server that ignored the schema)."""
    try:
        value = json.loads(text).get("answer")
    except (ValueError, AttributeError):
        return None
    match = _ANSWER_VALUE.search(text)
    if value not in options or match is None:
        return None
    return value, match.end()


def _option_of(fragment: str, options: Sequence[str]) -> str | None:
    """The one option a token's text can begin ("Not" -> "Not Equal"); None if none or several."""
    fragment = fragment.casefold()
    found = [o for o in options if fragment and (o.casefold().startswith(fragment) or fragment.startswith(o.casefold()))]
    return found[0] if len(found) == 1 else None


def first_token_choice(tokens: Sequence[Token], start: int, options: Sequence[str]) -> tuple[str, float] | None:
    """The option the token at character `start` begins, and its logprob lead there over the best
    other option among the alternatives (when no other option is listed, the lead over the least
    likely alternative: a lower bound). None when that token begins no option."""
    offset = 0
    for text, logprob, alternatives in tokens:
        if offset + len(text) > start:
            break
        offset += len(text)
    else:
        return None
    cut, best = start - offset, {}
    for candidate, lp in [(text, logprob), *alternatives]:
        option = _option_of(candidate[cut:].lstrip(), options) if candidate[:cut] == text[:cut] else None
        if option is not None and lp > best.get(option, float("-inf")):
            best[option] = lp
    chosen = _option_of(text[cut:].lstrip(), options)
    if chosen is None or chosen not in best:
        return None
    others = [lp for option, lp in best.items() if option != chosen]
    floor = max(others) if others else min([logprob, *(lp for _, lp in alternatives)])
    return chosen, best[chosen] - floor
