"""Tokenise formatted segments and mask the loss: labels are -100 except on response tokens.

Pure given an `Encoder` (any callable text -> ids plus the BOS/EOS ids), so tests use a
fake character tokenizer. Truncation keeps the first `max_length` tokens (a counted
warning) or drops the row (policy "drop"); a row left without a trainable token is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from generation.prompts import special_token_texts
from train.formatting import EOS, Segment, UnusableRow, chat_template_segments, format_segments, row_messages

IGNORE = -100  # label value that torch's cross-entropy (and HF models) skip


@dataclass(frozen=True)
class Encoder:
    encode: Callable[[str], list[int]]  # text with the template's special markers (chat_template)
    bos_id: int | None  # prepended when the tokenizer adds BOS by itself (LLaMA), else None
    eos_id: int
    pad_id: int
    render_chat: Callable | None = None  # apply_chat_template(messages, add_generation_prompt)
    # Plain text: special-token strings ("<|im_end|>", "</s>") stay text; None: `encode`.
    encode_plain: Callable[[str], list[int]] | None = None
    special_texts: frozenset[str] = frozenset()  # every text the tokenizer makes a special token


def pad_id_of(tokenizer) -> int:
    """Many causal LMs have no pad token; their EOS serves, as the attention mask hides it."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def hf_encoder(tokenizer) -> Encoder:
    """Adapter from a transformers tokenizer."""
    probe = tokenizer("a").input_ids
    adds_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    pad = pad_id_of(tokenizer)

    def render(messages, add_generation_prompt):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return Encoder(encode=lambda text: tokenizer(text, add_special_tokens=False).input_ids,
                   bos_id=tokenizer.bos_token_id if adds_bos else None, eos_id=tokenizer.eos_token_id,
                   pad_id=pad, render_chat=render if tokenizer.chat_template else None,
                   encode_plain=lambda text: tokenizer(text, add_special_tokens=False,
                                                       split_special_tokens=True).input_ids,
                   special_texts=frozenset(special_token_texts(tokenizer)))


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def continuation_ids(enc: Encoder, context: str, context_ids: list[int] | None,
                     text: str) -> tuple[list[int], list[int] | None]:
    """Token ids of `text` as they appear after `context` when both are tokenised together,
    and the ids of `context + text` (None when unknown), for the next segment.

    Encoding `text` on its own can differ at the boundary: LLaMA's SentencePiece tokenizers
    prepend a word marker to every call, so " Paris" alone becomes ["▁", "▁Paris"], a stray
    token the model would learn to emit after "### Response:". The joint encoding has none.
    If the boundary merges tokens (the joint ids do not start with the context's), `text`
    is encoded on its own.
    """
    if not context:
        tokens = list(enc.encode(text))
        return tokens, tokens
    head = context_ids if context_ids is not None else list(enc.encode(context))
    both = list(enc.encode(context + text))
    if both[:len(head)] == head:
        return both[len(head):], both
    return list(enc.encode(text)), None


def tokenize_segments(segments: list[Segment], enc: Encoder, max_length: int,
                      policy: str = "truncate") -> Example:
    """`segments` of a plain template (wizardlm, vicuna): their text has no special markers, so a
    sample's "<|im_start|>" or "</s>" is tokenised as text, never as a turn or an end."""
    return _tokenize(segments, replace(enc, encode=enc.encode_plain or enc.encode), max_length, policy)


def _tokenize(segments: list[Segment], enc: Encoder, max_length: int, policy: str) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    context, context_ids = "", None  # text since the start or the last EOS, tokenised jointly
    for text, trainable in segments:
        if text is EOS:
            tokens, context, context_ids = [enc.eos_id], "", None
        else:
            tokens, context_ids = continuation_ids(enc, context, context_ids, text)
            context += text
        ids += tokens
        labels += tokens if trainable else [IGNORE] * len(tokens)
    if enc.bos_id is not None and ids[:1] != [enc.bos_id]:
        # A rendered chat template may start with the BOS text already: never two BOS tokens.
        ids, labels = [enc.bos_id] + ids, [IGNORE] + labels
    if labels:
        # Nothing of this sample precedes its first token; masking it also guarantees that a
        # packed neighbour's last token is never asked to predict it (HF shifts labels by one).
        labels[0] = IGNORE
    truncated = len(ids) > max_length
    if truncated:
        if policy == "drop":
            raise UnusableRow("too_long")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        raise UnusableRow("no_response_after_truncation")
    return Example(ids, labels, truncated)


def tokenize_row(row: dict, template: str, enc: Encoder, max_length: int, policy: str) -> Example:
    """One evolve row -> Example, or UnusableRow(reason)."""
    if template == "chat_template":
        if enc.render_chat is None:
            raise ValueError("the tokenizer has no chat template; use data.template=wizardlm or vicuna_v1.1")
        messages = row_messages(row)
        if any(special in m["content"] for m in messages for special in enc.special_texts):
            # The rendered conversation would hold them beside the template's own markers, and
            # nothing tells them apart there: such a sample could forge turns. Counted, not trained.
            raise UnusableRow("special_token_text")
        return _tokenize(chat_template_segments(messages, enc.render_chat), enc, max_length, policy)
    return tokenize_segments(format_segments(row, template), enc, max_length, policy)


def tokenize_rows(rows: list[dict], template: str, enc: Encoder, max_length: int, policy: str) -> dict:
    """Columns for a batch: status ("ok" or the drop reason), truncated, input_ids, labels, n_tokens."""
    out: dict[str, list] = {"id": [], "status": [], "truncated": [], "input_ids": [], "labels": [],
                            "n_tokens": []}
    for row in rows:
        try:
            example = tokenize_row(row, template, enc, max_length, policy)
            status, ids, labels, truncated = "ok", example.input_ids, example.labels, example.truncated
        except UnusableRow as exc:
            status, ids, labels, truncated = exc.reason, [], [], False
        out["id"].append(str(row.get("id", "")))
        out["status"].append(status)
        out["truncated"].append(truncated)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["n_tokens"].append(len(ids))
    return out


def reply_stop_ids(tokenizer, template: str) -> list[int]:
    """Every token a trained reply can end with: the EOS, and for `chat_template` the special tokens
    the template closes an assistant turn with (Qwen's <|im_end|>, Llama-3's <|eot_id|>), which are
    often not the tokenizer's EOS. The export's generation config stops on all of them."""
    stops = [tokenizer.eos_token_id]
    if template == "chat_template" and tokenizer.chat_template:
        enc = hf_encoder(tokenizer)
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        reply = "".join(text for text, trainable in chat_template_segments(probe, enc.render_chat) if trainable)
        specials = set(tokenizer.convert_tokens_to_ids(sorted(enc.special_texts)))
        stops += [t for t in enc.encode(reply) if t in specials]
    return list(dict.fromkeys(t for t in stops if t is not None))
