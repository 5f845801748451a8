"""The paper's four elimination rules as pure functions, plus the parsing they need.

A candidate fails on the first rule that holds; the cheap text rules run before any model
call so that no response or equality check is generated for a candidate already lost.
Words are Unicode words (any script); the stop words and the word "sorry" are English only,
so rules 2 and 3 judge other languages by their punctuation and length alone.
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata

from evol.templates import LEAK_LABELS, LEAK_MARKERS

EMPTY_EVOLUTION = "empty_evolution"
TRUNCATED_EVOLUTION = "truncated_evolution"     # the rewrite hit its token limit: cut mid-text
TEMPLATE_LEAK = "template_leak"                 # rule 4
ANSWER_APPENDED = "answer_appended"             # the rewrite goes on to answer itself
NO_INFORMATION_GAIN = "no_information_gain"     # rule 1
COULD_NOT_ANSWER = "could_not_answer"           # rule 2
TRIVIAL_RESPONSE = "trivial_response"           # rule 3
RULES = (EMPTY_EVOLUTION, TRUNCATED_EVOLUTION, TEMPLATE_LEAK, ANSWER_APPENDED, NO_INFORMATION_GAIN,
         COULD_NOT_ANSWER, TRIVIAL_RESPONSE)

EQUAL, NOT_EQUAL, UNPARSED, SKIPPED = "equal", "not_equal", "unparsed", "skipped"
EQUALITY_OPTIONS = ("Equal", "Not Equal")  # the answers the equality prompt allows, in this order

SORRY_MAX_WORDS = 80
# Room for "**Answer: Not Equal.**" even from a tokenizer that spends a token per character
# or two, plus the chatter a small model puts first ("They are not equal."). Fewer tokens cut
# the verdict itself, and a cut verdict is unparsed.
MIN_JUDGE_TOKENS = 16

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

_APOSTROPHES = str.maketrans({"’": "'", "ʼ": "'"})
# Scripts written without spaces: each character is a word, so spacing cannot hide a copy.
_IDEOGRAPHS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"


_PAIRS = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’", "«": "»", "„": "“"}
# A reply's opening that introduces the rewrite instead of being it: "Sure! Here is the rewritten
# prompt:", "Certainly, here's a harder version:". A courtesy word set off by punctuation (or ending
# the line), or "here is" naming the rewrite, ending in a colon; "Here is a table: ..." (a seed's own
# wording) is not one, nor a rewrite that opens with the word: "Absolutely no libraries: ...",
# "Great Expectations: ...", "Okay Google vs Siri: ..." keep every word.
_COURTESY = r"(?:sure|certainly|of course|okay|ok|absolutely|alright|great)(?:[!,.]|\s*(?=[:\n]))"
_PREAMBLE = re.compile(
    r"\A\W*(?:" + _COURTESY + r"[^:\n]{0,120}?"
    r"|here(?:'s|’s| is| are)\b[^:\n]{0,100}?\b(?:prompt|instruction|version|rewrite|rewritten|revision|revised|"
    r"attempt)\b[^:\n]{0,40}?)(?::[*_]*\s*|[!.]?[*_]*\s*\n\s*)", re.I)
_COURTESY_LINE = re.compile(r"\A\W*" + _COURTESY + r"[^\n]{0,40}\Z", re.I)


def strip_preamble(text: str) -> str:
    """The rewrite without a courtesy line or an introduction ("Sure! Here is the rewritten prompt:")."""
    match = _PREAMBLE.match(text)
    if match and text[match.end():].strip():
        return text[match.end():].strip()
    first, _, rest = text.partition("\n")
    return rest.strip() if _COURTESY_LINE.match(first) and rest.strip() else text


def clean_evolved_instruction(text: str) -> str:
    """Whitespace, an introduction before the rewrite and one pair of quotes around the whole text
    are formatting, not content; anything else is kept as is (`"Write a poem" about "love"`)."""
    text = strip_preamble(text.strip())
    while len(text) >= 2 and _PAIRS.get(text[0]) == text[-1] and not set(text[0] + text[-1]) & set(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _char_class(codepoints: list[int]) -> str:
    """The body of a regex character class: runs of consecutive code points as `a-z` ranges."""
    parts, start = [], codepoints[0]
    for prev, cp in zip(codepoints, codepoints[1:] + [None]):
        if cp != prev + 1:
            parts.append(re.escape(chr(start)) + (f"-{re.escape(chr(prev))}" if prev != start else ""))
            start = cp
    return "".join(parts)


@functools.cache
def _word_pattern() -> re.Pattern:
    """Letters, digits and combining marks. `\\w` alone cuts words at marks (Devanagari vowel
    signs, Arabic vowels); built once per process (~0.1 s) rather than at import."""
    marks = _char_class([cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] == "M"])
    char = f"(?:(?![{_IDEOGRAPHS}])[^\\W_]|[{marks}])"
    return re.compile(f"[{_IDEOGRAPHS}]|{char}+(?:'{char}+)*")


def words(text: str) -> list[str]:
    """Case-folded words of any script; NFKC makes full-width and composed forms the same word."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    return _word_pattern().findall(text)


def normalize(text: str) -> str:
    return " ".join(words(text))


# Sentence punctuation and quotes: a rewrite that only adds a full stop or quotes is a copy. Any
# other symbol is content ("2+2" vs "2*2", "x >= y" vs "x <= y").
_SENTENCE_MARKS = str.maketrans("", "", ".,!?;:\"'`“”‘’«»…。，、！？；：")


def copy_key(text: str) -> str:
    """What two instructions must share to be verbatim copies: case-folded NFKC text without
    sentence punctuation, whitespace collapsed, every other symbol kept."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold().translate(_SENTENCE_MARKS)
    return " ".join(text.split())


def could_not_answer(response: str) -> bool:
    """Rule 2: an apology ("sorry", English only) in a short answer."""
    return "sorry" in response.casefold() and len(words(response)) < SORRY_MAX_WORDS


def is_trivial_response(response: str) -> bool:
    """Rule 3: only punctuation and (English) stop words, an empty answer included."""
    return all(word in STOP_WORDS for word in words(response))


# --- rule 4: template leak -------------------------------------------------------------------

_DECOR = r"[\s#*_>`\"'“”‘’-]*"
_LEAD_IN = r"(?:(?:here\s+is|here's|below\s+is|this\s+is)\s+)?(?:(?:the|my|your|a)\s+)?"


def _squash(text: str) -> str:
    return " ".join(text.casefold().split())


@functools.cache
def _leak_patterns() -> tuple[tuple[str, re.Pattern], ...]:
    """(phrase, pattern): a marker anywhere ("# Rewritten Instruction #" too); a bare phrase only as
    a label, i.e. starting a line or sentence and followed by ':' or the line's end."""
    def spaced(phrase: str) -> str:
        return r"\s+".join(map(re.escape, phrase.split()))
    markers = [(_squash(m), re.compile(r"#\s*" + spaced(m.strip("#")) + r"\s*#", re.I)) for m in LEAK_MARKERS]
    labels = [(phrase, re.compile(rf"(?:^|[.!?]){_DECOR}{_LEAD_IN}{spaced(phrase)}(?:\s+(?:is|would\s+be))?"
                                  rf"{_DECOR}(?::|$)", re.I | re.M))
              for phrase in LEAK_LABELS]
    return tuple(markers + labels)


def has_template_leak(candidate: str, parent: str) -> bool:
    """The rewrite copied words of the evolving prompt that its parent did not already hold.

    Markers ("#Rewritten Instruction#") always count. Bare phrases ("original instruction",
    "given prompt") count only as a label: at the start of a line or sentence (after markdown,
    quotes or "Here is the") and followed by ':' or the line's end, which is how an echoed
    template heading looks. Prose that uses the words ("the original instruction set of the
    8086", "write a story for the given prompt.") is left alone. A phrase the parent already
    contains (any case) is the user's text, not a leak, so such a seed can still evolve.
    """
    parent_squashed = _squash(parent)
    for phrase, pattern in _leak_patterns():
        found_in_parent = pattern.search(parent) if phrase.startswith("#") else phrase in parent_squashed
        if pattern.search(candidate) and not found_in_parent:
            return True
    return False


# A line after the instruction that starts its answer: "Answer:", "### Response:", "Sure! Here is ...".
_ANSWER_LINE = re.compile(r"\n\W*(?:(?:sample|example|my|the|final|model|suggested)\s+)?(?:answer|response|solution|"
                          r"reply)[*_]*\s*:|\n\W*(?:sure|certainly|of course)\b[^\n]{0,80}?(?:\bhere\b|:)", re.I)


def has_appended_answer(candidate: str, parent: str) -> bool:
    """The rewrite is followed by its own answer (a later line opens one). A parent that already
    holds such a line (a seed that shows an answer format) makes it the user's text."""
    return bool(_ANSWER_LINE.search(candidate)) and not _ANSWER_LINE.search(parent)


# --- rule 1: the judge's equality verdict ----------------------------------------------------

_VERDICT_WORDS = {"equal": True, "unequal": False, "same": True, "identical": True, "equivalent": True,
                  "different": False, "differ": False, "differs": False}
_ADJECTIVES_BEFORE_NOUNS = frozenset({"same", "identical", "equivalent", "different"})  # "the same topic"
_VERBS = frozenset({"differ", "differs"})
_FOLLOWERS = frozenset({"to", "from", "as", "in"})  # "different from", "the same as", "equal in depth"
_COPULAS = frozenset({"is", "are", "be", "was", "were", "am", "seem", "seems", "appear", "appears",
                      "remain", "remains", "being", "isn't", "aren't", "wasn't", "weren't"})
_ADVERBS = frozenset({"the", "exactly", "really", "quite", "entirely", "completely", "totally", "fully",
                      "essentially", "basically", "clearly", "definitely", "absolutely", "strictly", "truly"})
_NEGATORS = frozenset({"not", "never", "non", "hardly", "neither", "nor", "cannot", "no", "nowhere", "nobody",
                       "none", "nothing", "noone", "barely", "scarcely"})
# Words that make an "equal" further back in its sentence doubtful ("they are not, in my view,
# equal", "far from equal", "almost equal"): such a statement is no evidence of equality.
_DOUBTS = frozenset({"far", "unlikely", "false", "wrong", "incorrect", "less", "more", "doubt", "doubtful",
                     "almost", "nearly", "roughly", "largely", "approximately", "mostly", "partly", "partially",
                     "somewhat", "broadly", "virtually", "practically", "kind", "sort", "fairly", "pretty"})
# After an "equal", words that narrow it to less than the question asks ("equal only in topic").
_LIMITERS = frozenset({"only", "just", "merely", "solely", "partly", "partially", "somewhat", "superficially",
                       "roughly", "mostly", "largely", "approximately", "topic", "topics", "subject", "theme",
                       "wording", "spirit", "style", "tone", "form", "format", "length", "domain", "surface"})
# A first answer taken back ("Equal. Wait, no: Not Equal."): no verdict.
_CORRECTIONS = frozenset({"wait", "actually", "correction", "oops", "scratch", "mistake", "rather", "instead"})
_YES, _NO = frozenset({"yes", "true", "correct"}), frozenset({"no", "false", "wrong", "incorrect"})
_CONTRASTS = frozenset({"but", "however", "although", "though", "whereas", "while", "except", "yet"})
_HEDGES = frozenset({"whether", "if", "might", "may", "maybe", "perhaps", "possibly", "probably", "unclear",
                     "unsure", "clear", "sure", "unlikely", "likely"})  # "it is not clear whether they are equal"
_LABEL = r"^(?:(?:final\s+)?(?:answer|verdict|judgement|judgment|result|output)\s*:\s*)?"
_BARE = re.compile(_LABEL + r"(not equal|unequal|equal|not the same|the same|different) ?(?P<end>[.!\n]|$)")
_SENTENCE = re.compile(r"[^.!?;\n]+[.!?;\n]?")
_TOKEN = re.compile(r"[\w']+|[^\w\s]")


def _clean_answer(answer: str) -> str:
    """Lower case without markdown, quotes and joiners: "**NOT_EQUAL**" reads "not equal"."""
    text = answer.translate(_APOSTROPHES).lower()
    text = re.sub(r"[*_`#\"“”]|(?<=\w)-(?=\w)|(?<!\w)'|'(?!\w)", " ", text)
    return "\n".join(" ".join(line.split()) for line in text.lstrip().split("\n"))  # a last "\n" stays


def _is_negator(token: str) -> bool:
    return token in _NEGATORS or token.endswith("n't")


def _clause_before(tokens: list[str], i: int) -> list[str]:
    """Up to four words before token i, not reaching back past punctuation."""
    window = tokens[max(0, i - 4):i]
    cuts = [k for k, t in enumerate(window) if not t[0].isalnum()]
    return window[cuts[-1] + 1:] if cuts else window


def _in_predicate(tokens: list[str], i: int) -> bool:
    """A verdict word states the verdict when a copula leads to it ("they are not the same") or it
    opens the clause ("Not equal", "Answer: equal"), not as an attribute ("into equal parts")."""
    before = _clause_before(tokens, i)
    if tokens[i] in _VERBS or any(t in _COPULAS or t.endswith(("'re", "'s")) for t in before):
        return True
    start = i - len(before)
    opens_clause = start == 0 or not tokens[start - 1][0].isalnum()
    return opens_clause and all(_is_negator(t) or t in _ADVERBS for t in before)


def _polarities(tokens: list[str]) -> set[bool | None]:
    """Each verdict stated in one sentence: True for equal, False for not equal (negation applied),
    None for a statement that cannot be read safely.

    The two answers are not symmetric: a wrong "equal" eliminates a good candidate, a wrong "not
    equal" only keeps one. So an equal reading needs a sentence with no negation or doubt before
    it anywhere, not only in its own clause ("They are not, strictly speaking, equal")."""
    found: set[bool | None] = set()
    for i, token in enumerate(tokens):
        if token not in _VERDICT_WORDS or not _in_predicate(tokens, i):
            continue
        after = tokens[i + 1] if i + 1 < len(tokens) else "."
        if token in _ADJECTIVES_BEFORE_NOUNS and after[0].isalnum() and after not in _FOLLOWERS:
            continue
        clause = _clause_before(tokens, i)
        negated = any(_is_negator(t) for t in clause)
        if after == ":":  # "Equal: no" / "Equal: true"
            answer = tokens[i + 2] if i + 2 < len(tokens) else ""
            negated = negated != (answer in _NO) if answer in _YES | _NO else negated
        equal = _VERDICT_WORDS[token] != negated
        earlier = tokens[:i - len(clause)]
        doubtful = (any(_is_negator(t) or t in _DOUBTS for t in earlier) or _DOUBTS.intersection(clause)
                    or any(_is_negator(t) for t in clause)  # "not different" is not "equal"
                    or _LIMITERS.intersection(_clause_after(tokens, i)))
        found.add(None if equal and doubtful else equal)
    return found


def _clause_after(tokens: list[str], i: int) -> list[str]:
    """The words after token i up to the next punctuation ("equal only in topic")."""
    after = []
    for token in tokens[i + 1:]:
        if not token[0].isalnum():
            break
        after.append(token)
    return after


def _kind(match: re.Match) -> str:
    return NOT_EQUAL if match[1] in ("not equal", "unequal", "not the same", "different") else EQUAL


def _bare_verdict(text: str, complete: bool) -> str | None:
    """The answer the prompt asks for, first and on its own ("Not Equal." / "Answer: Equal"), unless
    what follows takes it back ("Equal. Wait, no: Not Equal.") or opens with the other answer."""
    match = _BARE.match(text)
    if match is None or (not complete and not match["end"]):
        return None
    rest = text[match.end():]
    later = [_BARE.match(sentence.strip()) for sentence in _SENTENCE.findall(rest)]
    if _CORRECTIONS.intersection(_TOKEN.findall(rest)) or any(m and _kind(m) != _kind(match) for m in later):
        return UNPARSED
    return _kind(match)


def parse_equality(answer: str) -> str:
    """Equal / Not Equal from a judge's free text; anything unclear is UNPARSED, never a guess.

    The first answer token decides when it stands alone. Otherwise every statement (questions
    aside) must agree, with negations applied ("not exactly equal", "aren't the same"); a hedged
    statement ("they might be equal") or an "equal" qualified by "but"/"although"/... is no evidence.
    """
    text = _clean_answer(answer)
    bare = _bare_verdict(text, complete=True)
    if bare is not None:
        return bare
    found, contrast = set(), False
    for sentence in _SENTENCE.findall(text):
        tokens = _TOKEN.findall(sentence)
        stated = _polarities(tokens) if not sentence.endswith("?") else set()
        if None in stated or (stated and _HEDGES.intersection(tokens)):
            return UNPARSED
        found |= stated
        contrast = contrast or bool(_CONTRASTS.intersection(tokens))
    if found == {False}:
        return NOT_EQUAL
    return EQUAL if found == {True} and not contrast else UNPARSED


def parse_equality_generation(text: str, finished: bool) -> str:
    """A verdict cut off by max_tokens counts only if its first token already stood complete
    ("Not Equal." then cut): a cut "Equal" may have gone on "... in topic, but not in depth"."""
    if finished:
        return parse_equality(text)
    return _bare_verdict(_clean_answer(text), complete=False) or UNPARSED


def equality_verdict(option: str | None, text: str, finished: bool) -> str:
    """EQUAL / NOT_EQUAL from a constrained answer (one of EQUALITY_OPTIONS), else the strict parse
    of the judge's free text."""
    if option is not None:
        return EQUAL if option == EQUALITY_OPTIONS[0] else NOT_EQUAL
    return parse_equality_generation(text, finished)


# --- the rules in order ----------------------------------------------------------------------

def reason_before_response(parent: str, candidate: str, truncated: bool = False) -> str | None:
    """Rules that need no model call; `truncated`: the rewrite stopped at its token limit."""
    if not candidate:
        return EMPTY_EVOLUTION
    if truncated:
        return TRUNCATED_EVOLUTION  # half an instruction must not be answered nor evolved again
    if has_template_leak(candidate, parent):
        return TEMPLATE_LEAK
    if has_appended_answer(candidate, parent):
        return ANSWER_APPENDED
    if copy_key(candidate) == copy_key(parent):
        return NO_INFORMATION_GAIN  # a verbatim copy needs no judge
    return None


def reason_after_response(response: str) -> str | None:
    """Rules 2 and 3, for any generated answer (round-0 seed answers included)."""
    if could_not_answer(response):
        return COULD_NOT_ANSWER
    if is_trivial_response(response):
        return TRIVIAL_RESPONSE
    return None


def reason_after_equality(verdict: str) -> str | None:
    """An unparsed verdict keeps the candidate: no evidence of equality, counted in the summary."""
    return NO_INFORMATION_GAIN if verdict == EQUAL else None
