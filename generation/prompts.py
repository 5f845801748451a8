"""Prompt formats: how a user turn becomes the text a model was trained to continue.

The paper's 7B format lives here once; the train job formats its examples with the same string.
"""
from __future__ import annotations

PLAIN_TEMPLATE = "{prompt}\n\n### Response:"


def render_prompt(prompt: str, prompt_format: str, tokenizer=None) -> str:
    """chat: the tokenizer's chat template (plain when it has none); plain: PLAIN_TEMPLATE; raw: as is."""
    if prompt_format == "raw":
        return prompt
    if prompt_format == "chat" and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(prompt=prompt)
