"""Prompt templates written for evolray from the paper's description of each operation.

The markers below frame the instruction inside the evolving prompt. If the model copies one
of them, or one of the paper's own markers, into an evolved instruction, it leaked the
template (elimination rule 4): `LEAK_MARKERS` lists the markers and `LEAK_LABELS` the same
words without the '#', which count only where they are used as a label (see elimination).
"""
from __future__ import annotations

from evol.operations import OPERATIONS

ORIGINAL_MARKER = "#Original Instruction#"
REWRITTEN_MARKER = "#Rewritten Instruction#"
NEW_MARKER = "#New Instruction#"

# Our markers plus the ones the paper names for its own template.
LEAK_MARKERS = (ORIGINAL_MARKER, REWRITTEN_MARKER, NEW_MARKER,
                "#The Given Prompt#", "#Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#")
# "#The Given Prompt#" -> "given prompt": the words a model echoes as a heading ("Given prompt:").
LEAK_LABELS = tuple(dict.fromkeys(m.strip("#").lower().removeprefix("the ") for m in LEAK_MARKERS))

_IN_DEPTH_FRAME = """You are an expert at writing instructions for AI assistants.
Rewrite the instruction below into a harder version that well-known assistants such as ChatGPT
would find more challenging, while a person could still understand it and answer it.

How to rewrite it: {method}

Rules:
- Keep every non-text part of the original (tables, code, inputs) and keep the topic.
- Add only 10 to 20 words to the original; do not make it verbose.
- Reply with the rewritten instruction only, with no title, label, explanation or answer.

{original_marker}
{instruction}

{rewritten_marker}
"""

IN_DEPTH_METHODS = {
    "add_constraints": "add one more constraint or requirement that the answer must satisfy.",
    "deepening": "where the instruction asks about a topic, make the inquiry go deeper and broader.",
    "concretizing": "replace general concepts with more specific, concrete ones.",
    "increase_reasoning": "if the instruction can be solved in a few simple steps, ask explicitly for "
                          "multiple-step reasoning.",
    "complicate_input": "add a piece of structured input the answer must use, such as a small table, "
                        "a code snippet, a formula, or JSON or XML data.",
}

_IN_BREADTH_FRAME = """You are an expert at writing instructions for AI assistants.
Take the instruction below as inspiration and write a brand-new instruction of the same domain
that is rarer and less common. It should be about as long and as hard as the original, and a
person must be able to understand it and answer it.
Reply with the new instruction only, with no title, label, explanation or answer.

{original_marker}
{instruction}

{new_marker}
"""

_EQUALITY_FRAME = """Here are two instructions for an AI assistant.
Are they equal, meaning they have the same constraints and requirements and the same depth and
breadth of inquiry? Reply with exactly one of: Equal, Not Equal.

First instruction:
{first}

Second instruction:
{second}
"""


def user_turn(instruction: str, context: str | None) -> str:
    """Alpaca-style rows carry optional input/context that belongs to the instruction."""
    return f"{instruction}\n\n{context}" if context else instruction


def evolve_prompt(operation: str, instruction: str) -> str:
    if operation == "in_breadth":
        return _IN_BREADTH_FRAME.format(original_marker=ORIGINAL_MARKER, instruction=instruction,
                                        new_marker=NEW_MARKER)
    return _IN_DEPTH_FRAME.format(method=IN_DEPTH_METHODS[operation], original_marker=ORIGINAL_MARKER,
                                  instruction=instruction, rewritten_marker=REWRITTEN_MARKER)


def equality_prompt(parent: str, candidate: str) -> str:
    return _EQUALITY_FRAME.format(first=parent, second=candidate)


def template_overheads() -> list[str]:
    """Every evolving prompt (one per operation, in OPERATIONS order), then the equality prompt,
    each rendered with empty instructions.

    The caller counts their tokens with the model's tokenizer to check at config time that
    the longest instruction plus the longest template fits the prompt limit, so that the
    template's own rules are never truncated away. The equality prompt (last) holds TWO
    instructions, the parent and the candidate.
    """
    return [evolve_prompt(op, "") for op in OPERATIONS] + [equality_prompt("", "")]
