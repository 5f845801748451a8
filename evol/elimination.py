"""The paper's four elimination rules as pure functions, plus the parsing they need.

A candidate fails on the first rule that holds; the cheap text rules run before any model
call so that no response or equality check is generated for a candidate already lost.
"""
from __future__ import annotations

import re

from evol.templates import LEAK_PHRASES

EMPTY_EVOLUTION = "empty_evolution"
TEMPLATE_LEAK = "template_leak"                 # rule 4
NO_INFORMATION_GAIN = "no_information_gain"     # rule 1
COULD_NOT_ANSWER = "could_not_answer"           # rule 2
TRIVIAL_RESPONSE = "trivial_response"           # rule 3
RULES = (EMPTY_EVOLUTION, TEMPLATE_LEAK, NO_INFORMATION_GAIN, COULD_NOT_ANSWER, TRIVIAL_RESPONSE)

EQUAL, NOT_EQUAL, UNPARSED, SKIPPED = "equal", "not_equal", "unparsed", "skipped"

SORRY_MAX_WORDS = 80

STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being
below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
during each few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here
here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself
let's me more most mustn't my myself no nor not of off on once only or other ought our ours ourselves
out over own same shan't she she'd she'll she's should shouldn't so some such than that that's the their
theirs them themselves then there there's these they they'd they'll they're they've this those through
to too under until up very was wasn't we we'd we'll we're we've were weren't what what's when when's
where where's which while who who's whom why why's with won't would wouldn't you you'd you'll you're
you've your yours yourself yourselves yes ok okay
""".split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_QUOTES = "\"'`“”‘’"


def clean_evolved_instruction(text: str) -> str:
    """Whitespace and wrapping quotes are formatting, not content; anything else is kept as is."""
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def has_template_leak(instruction: str) -> bool:
    lowered = instruction.lower()
    return any(phrase in lowered for phrase in LEAK_PHRASES)


def could_not_answer(response: str) -> bool:
    return "sorry" in response.lower() and len(response.split()) < SORRY_MAX_WORDS


def is_trivial_response(response: str) -> bool:
    """Only punctuation and stop words (an empty answer included)."""
    return all(word in STOP_WORDS for word in _WORD.findall(response.lower()))


def parse_equality(answer: str) -> str:
    """Equal / Not Equal from a judge's free text; anything else is UNPARSED, never a guess."""
    words = normalize(answer).split()
    if not words:
        return UNPARSED
    text = " ".join(words)
    if re.search(r"\bnot equal\b|\bunequal\b|\bnot the same\b", text):
        return NOT_EQUAL
    if re.search(r"\bequal\b", text):
        return EQUAL
    return UNPARSED


def reason_before_response(parent: str, candidate: str) -> str | None:
    if not candidate:
        return EMPTY_EVOLUTION
    if has_template_leak(candidate):
        return TEMPLATE_LEAK
    if normalize(candidate) == normalize(parent):
        return NO_INFORMATION_GAIN  # a verbatim copy needs no judge
    return None


def reason_after_response(response: str) -> str | None:
    if could_not_answer(response):
        return COULD_NOT_ANSWER
    if is_trivial_response(response):
        return TRIVIAL_RESPONSE
    return None


def reason_after_equality(verdict: str) -> str | None:
    """An unparsed verdict keeps the candidate: no evidence of equality, counted in the summary."""
    return NO_INFORMATION_GAIN if verdict == EQUAL else None
