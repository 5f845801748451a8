"""Prompt formats: how a user turn becomes the text a model was trained to continue, and its token ids.

The trained formats live here once: the train job formats its examples with the same strings
(train.formatting), so a model is prompted exactly as it was trained, BOS included.
User text is always tokenised as plain text: a seed that holds "<|im_start|>system ..." or "</s>"
gets the ids of those characters, never the special tokens, so it cannot open a turn of its own.
Only the chat template's own markers are special tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

from generation.types import GenerationError

# The paper's 7B format (train template and prompt format "wizardlm"; "plain" is the same text without BOS).
PLAIN_TEMPLATE = "{prompt}\n\n### Response:"
# FastChat's Vicuna v1.1 conversation (WizardLM 13B/30B): the system line, then one turn per exchange.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
VICUNA_TURN = "USER: {prompt} ASSISTANT:"
# Stanford Alpaca's prompt for an instruction without input (Alpaca-7B baselines were trained on it).
ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{prompt}\n\n### Response:")
# Prompt format -> the text before the answer of a one-turn conversation. These formats start with the
# tokenizer's BOS where it adds one by itself (LLaMA), as training does; the user text is stripped, as
# training strips it.
TRAINED_FORMATS = {"wizardlm": PLAIN_TEMPLATE, "vicuna_v1.1": f"{VICUNA_SYSTEM} {VICUNA_TURN}",
                   "alpaca": ALPACA_TEMPLATE}
# train.data.template -> the prompt format that prompts a model trained with it.
PROMPT_FORMAT_OF_TEMPLATE = {"wizardlm": "wizardlm", "vicuna_v1.1": "vicuna_v1.1", "chat_template": "chat"}
# Stands in for the user's text while the template is rendered; private-use characters that no
# template adds or strips.
USER_SLOT = "\ue000evolray-user-turn\ue000"


def render_prompt(prompt: str, prompt_format: str, tokenizer=None) -> str:
    """chat: the tokenizer's chat template (an error when it has none: no silent other format);
    wizardlm / vicuna_v1.1 / alpaca: TRAINED_FORMATS (BOS: see prompt_token_ids); plain:
    PLAIN_TEMPLATE; raw: as is."""
    if prompt_format == "raw":
        return prompt
    if prompt_format == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise GenerationError("no_chat_template", "prompt_format chat needs a tokenizer with a chat template; "
                                  "use the format the model was trained with (wizardlm, vicuna_v1.1, alpaca)")
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    if prompt_format in TRAINED_FORMATS:
        return TRAINED_FORMATS[prompt_format].format(prompt=prompt.strip())
    return PLAIN_TEMPLATE.format(prompt=prompt)


# Checks that a template puts the user's text in as it is (no trim, no escaping): then the template is
# rendered once and every prompt is the same two pieces around the text.
VERBATIM_PROBE = " \n\tprobe {{ x }} {% raw %} <b> & 'quoted' \"text\" \n "


@dataclass(frozen=True)
class Frame:
    """What does not change between prompts of one tokenizer and format, worked out once: the special-
    token texts, and the template's text before and after the user's text (None when the template
    changes the text: then each prompt is rendered)."""
    specials: frozenset[str]
    before: str | None
    after: str | None
    before_ids: tuple[int, ...] = ()
    after_ids: tuple[int, ...] = ()
    bos: tuple[int, ...] = ()  # see bos_ids

    def render(self, prompt: str, prompt_format: str, tokenizer) -> str:
        if self.before is None:
            return render_prompt(prompt, prompt_format, tokenizer)
        return self.before + prompt + self.after


_FRAMES: dict[tuple[int, str], tuple[object, Frame]] = {}  # by id(tokenizer): the tokenizer is kept alive


def frame_of(tokenizer, prompt_format: str) -> Frame:
    key = (id(tokenizer), prompt_format)
    if key not in _FRAMES:
        specials = frozenset(_special_token_texts(tokenizer))
        bos = tuple(bos_ids(tokenizer)) if prompt_format in TRAINED_FORMATS else ()
        frame = render_prompt(USER_SLOT, prompt_format, tokenizer)
        verbatim = frame.count(USER_SLOT) == 1 and (
            frame.replace(USER_SLOT, VERBATIM_PROBE) == render_prompt(VERBATIM_PROBE, prompt_format, tokenizer))
        if verbatim:
            before, after = frame.split(USER_SLOT)
            value = Frame(specials, before, after, tuple(_frame_ids(tokenizer, before)),
                          tuple(_frame_ids(tokenizer, after)), bos)
        else:
            value = Frame(specials, None, None, bos=bos)
        _FRAMES[key] = (tokenizer, value)
    return _FRAMES[key][1]


def bos_ids(tokenizer) -> list[int]:
    """[BOS] when the tokenizer puts one before every text by itself (LLaMA), as training prepends
    it (train.masking); else []."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def special_token_texts(tokenizer) -> set[str]:
    """Every text the tokenizer turns into a special token wherever it appears (worked out once)."""
    return set(frame_of(tokenizer, "plain").specials)


def _special_token_texts(tokenizer) -> set[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return {token.content for token in added.values() if token.special} | set(tokenizer.all_special_tokens)


def text_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of user texts as plain text (special-token strings split into ordinary tokens)."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]


def prompt_token_ids(prompt: str, prompt_format: str, tokenizer) -> list[int]:
    """The rendered prompt's ids, the user's text tokenised as plain text, after the BOS of a
    trained format (see `bos_ids`).

    A prompt without special-token strings (nearly all) is tokenised in one piece, exactly as
    before. Otherwise the template around the user's text is tokenised on its own, with its
    markers as special tokens, and the user's text in between as plain text. `raw` prompts are
    formatted by the caller and tokenised as given.
    """
    if prompt_format == "raw":
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    pieces = frame_of(tokenizer, prompt_format)
    return [*pieces.bos, *_formatted_ids(prompt, prompt_format, tokenizer, pieces)]


def _formatted_ids(prompt: str, prompt_format: str, tokenizer, pieces: Frame) -> list[int]:
    text = pieces.render(prompt, prompt_format, tokenizer)
    if not any(special in prompt for special in pieces.specials):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if pieces.before is not None:
        return [*pieces.before_ids, *text_token_ids(tokenizer, [prompt])[0], *pieces.after_ids]
    frame = render_prompt(USER_SLOT, prompt_format, tokenizer)
    # A template may trim the message (`content | trim`): then the trimmed text is what it holds.
    shown = next((p for p in (prompt, prompt.strip()) if frame.count(USER_SLOT) == 1
                  and frame.replace(USER_SLOT, p) == text), None)
    if shown is None:
        raise GenerationError("template_rewrites_prompt", "the chat template changes the user's text, which "
                              "holds special-token strings; refusing to tokenise them as special tokens")
    before, after = frame.split(USER_SLOT)
    return [*_frame_ids(tokenizer, before), *text_token_ids(tokenizer, [shown])[0], *_frame_ids(tokenizer, after)]


def _frame_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
