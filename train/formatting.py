"""Prompt templates: turn one training row into text segments, each marked trainable or not.

Pure: no tokenizer, no Ray. A row is a dict with the evolve job's columns (`messages`, or
`instruction` / `input` / `response`). The result is a list of `(text, trainable)` segments;
only assistant turns are trainable, so the loss is masked on everything the user wrote.

Templates:
- "wizardlm": the paper's 7B format (`generation.prompts.PLAIN_TEMPLATE`, the one copy of
  `{instruction}\\n\\n### Response:` that inference uses too), then " " + the response + EOS.
- "vicuna_v1.1": FastChat's Vicuna v1.1 conversation (used for WizardLM 13B/30B) + EOS per turn.
- "chat_template": the tokenizer's own chat template (handled in `train.tokenize`, which
  needs the tokenizer to render it).
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from generation.prompts import PLAIN_TEMPLATE, VICUNA_SYSTEM, VICUNA_TURN

TEMPLATES = ("wizardlm", "vicuna_v1.1", "chat_template")
EOS = object()  # placeholder segment: "the tokenizer's end-of-sequence token here"

Segment = tuple[Any, bool]  # (text or EOS, trainable)


class UnusableRow(ValueError):
    """A row that cannot become a training example; `reason` is a short counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def row_messages(row: dict) -> list[dict]:
    """The conversation of a row: its `messages` if present, else built from the Alpaca columns.

    The user turn is `instruction`, plus "\\n\\n" + `input` when `input` is non-empty.
    Raises UnusableRow("empty_instruction" / "empty_response") for rows without content, and
    UnusableRow("bad_messages") for `messages` that are not a list of role/content mappings (a JSON
    string of them, say): counted like any unusable row, not a crash of the data step.
    """
    messages = row.get("messages")
    if messages is not None and (isinstance(messages, (str, bytes, dict))
                                 or not all(isinstance(m, dict) for m in messages)):
        raise UnusableRow("bad_messages")
    if messages is not None and len(messages) > 0:
        messages = [{"role": _text(m.get("role")), "content": _text(m.get("content"))} for m in messages]
    else:
        user = _text(row.get("instruction")).strip()
        extra = _text(row.get("input")).strip()
        if user and extra:
            user = f"{user}\n\n{extra}"
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": _text(row.get("response"))}]
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise UnusableRow("empty_instruction")
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant or not all(m["content"].strip() for m in assistant):
        raise UnusableRow("empty_response")
    return messages


def _turns(messages: Iterable[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"].strip()) for m in messages if m["role"] in ("user", "assistant")]


def wizardlm_segments(messages: list[dict]) -> list[Segment]:
    """`{user}\\n\\n### Response:` + `{assistant}` EOS, repeated per turn (paper's 7B format)."""
    segments: list[Segment] = []
    for role, content in _turns(messages):
        if role == "user":
            segments.append((PLAIN_TEMPLATE.format(prompt=content), False))
        else:
            segments += [(f" {content}", True), (EOS, True)]
    return segments


def vicuna_segments(messages: list[dict]) -> list[Segment]:
    """`SYSTEM USER: {user} ASSISTANT: {assistant}</s>USER: ...` (FastChat's vicuna_v1.1)."""
    segments: list[Segment] = []
    first = True
    for role, content in _turns(messages):
        if role == "user":
            prefix = f"{VICUNA_SYSTEM} " if first else ""
            segments.append((prefix + VICUNA_TURN.format(prompt=content), False))
            first = False
        else:
            segments += [(f" {content}", True), (EOS, True)]
    return segments


def format_segments(row: dict, template: str) -> list[Segment]:
    """Segments for the string templates; "chat_template" is rendered by train.tokenize."""
    messages = row_messages(row)
    if template == "wizardlm":
        return wizardlm_segments(messages)
    if template == "vicuna_v1.1":
        return vicuna_segments(messages)
    raise ValueError(f"template {template!r} is not a string template (one of {TEMPLATES})")


def prompt_text(instruction: str, template: str) -> str:
    """The inference prompt for one instruction: what the model sees before it answers."""
    segments = format_segments({"instruction": instruction, "response": "x"}, template)
    return "".join(text for text, trainable in segments if not trainable)


def chat_template_segments(messages: list[dict], render) -> list[Segment]:
    """Segments from a tokenizer chat template, found by rendering growing prefixes.

    `render(messages, add_generation_prompt) -> str` is `tokenizer.apply_chat_template(...,
    tokenize=False)`. The assistant header belongs to the prompt; each assistant reply (with
    the template's end-of-turn text) is trainable; trailing user turns are not used.
    """
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(messages[:i], True)
        full = render(messages[: i + 1], False)
        if not head.startswith(done) or not full.startswith(head):
            raise UnusableRow("chat_template_not_incremental")
        segments += [(head[len(done):], False), (full[len(head):], True)]
        done = full
    return segments


def _jinja_text(text: str) -> str:
    """A jinja expression printing `text` exactly (a JSON string is a valid jinja string literal)."""
    return "{{ " + json.dumps(text) + " }}"


def string_chat_template(template: str, with_bos: bool) -> str:
    """A jinja chat template that renders `messages` as `wizardlm_segments` / `vicuna_segments` join
    them (EOS as the tokenizer's eos_token text; BOS first when the tokenizer adds one by itself),
    so that the exported tokenizer's `apply_chat_template` gives the trained prompt. System turns
    are left out, as in training; the generation prompt is already the user turn's tail."""
    before, after = PLAIN_TEMPLATE.split("{prompt}")
    content = "{{ message['content'] | trim }}"
    if template == "wizardlm":
        user = _jinja_text(before) + content + _jinja_text(after)
        head = ""
    elif template == "vicuna_v1.1":
        user = ("{%- if ns.first -%}" + _jinja_text(VICUNA_SYSTEM + " ") + "{%- set ns.first = false -%}"
                "{%- endif -%}" + _jinja_text("USER: ") + content + _jinja_text(" ASSISTANT:"))
        head = "{%- set ns = namespace(first=true) -%}"
    else:
        raise ValueError(f"template {template!r} is not a string template (one of {TEMPLATES})")
    return (head + ("{{ bos_token }}" if with_bos else "") + "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}" + user +
            "{%- elif message['role'] == 'assistant' -%}" + _jinja_text(" ") + content + "{{ eos_token }}"
            "{%- endif -%}{%- endfor -%}")
