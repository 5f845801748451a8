"""OpenAI-compatible backend: the official `AsyncOpenAI` client against any endpoint.

Retries with backoff on 408/409/429/5xx, timeouts and dropped connections are the client's
own (`max_retries`); a request that still fails is a GenerationError with a short reason,
which the job records. The API key is read from the environment variable named in config
and is scrubbed from every error text.
"""
from __future__ import annotations

import asyncio
import os

from generation.config import GenerationConfig
from generation.prompts import render_prompt, text_token_ids
from generation.types import Generation, GenerationError, SamplingParams, Secret

NO_KEY = "EMPTY"  # what a self-hosted server without --api-key accepts
CHARS_PER_TOKEN = 4  # the estimate used when no tokenizer is configured


def api_key(cfg: GenerationConfig, where: str = "generation") -> Secret:
    """The key from where the driver was told to read it (`api_key_secret`, else the environment
    variable `api_key_env`); a self-hosted endpoint (base_url) may run without one."""
    if cfg.openai.api_key_secret:
        from common.secrets import read_secret

        return Secret(read_secret(cfg.openai.api_key_secret, f"{where}.openai.api_key_secret"))
    key = os.environ.get(cfg.openai.api_key_env)
    return Secret(key if key else NO_KEY if cfg.openai.base_url else None)


def error_reason(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    return "bad_response"


class OpenAIGenerator:
    def __init__(self, cfg: GenerationConfig, key: Secret | None = None):
        from openai import AsyncOpenAI

        self.cfg = cfg
        self.model_name = cfg.model
        key = (key or api_key(cfg)).reveal()
        if key is None:
            raise GenerationError("no_api_key", f"environment variable {cfg.openai.api_key_env} is not set")
        self._key = key
        self.client = AsyncOpenAI(api_key=key, base_url=cfg.openai.base_url, timeout=cfg.openai.timeout_s,
                                  max_retries=cfg.openai.max_retries)
        self.tokenizer = None
        if cfg.openai.tokenizer:
            from transformers import AutoTokenizer

            from common.models import resolve_model

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.openai.tokenizer))
        self._slots: asyncio.Semaphore | None = None

    def count_tokens(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [-(-len(text) // CHARS_PER_TOKEN) for text in texts]
        return [len(ids) for ids in text_token_ids(self.tokenizer, texts)]

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key != NO_KEY else text

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.openai.max_in_flight)
        async with self._slots:
            try:
                text, finish, usage = await self._request(prompt, sampling)
            except GenerationError:
                raise
            except Exception as exc:
                detail = self._scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                raise GenerationError(error_reason(exc), detail[:300]) from None
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        return Generation(text=text.strip(),
                          prompt_tokens=prompt_tokens if prompt_tokens is not None else self.count_tokens([prompt])[0],
                          completion_tokens=(completion_tokens if completion_tokens is not None
                                             else self.count_tokens([text])[0]),
                          finished=finish != "length")

    async def _request(self, prompt: str, sampling: SamplingParams):
        """(text, finish_reason, usage) from the chat endpoint, or the completions endpoint for
        plain/raw prompt formats (the prompt is already the text the model continues)."""
        common = dict(model=self.cfg.model, temperature=sampling.temperature, top_p=sampling.top_p,
                      max_tokens=sampling.max_tokens)
        if self.cfg.prompt_format == "chat":
            response = await self.client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **common)
            choice = _first_choice(response)
            text = choice.message.content if choice.message is not None else None
        else:
            response = await self.client.completions.create(
                prompt=render_prompt(prompt, self.cfg.prompt_format), **common)
            choice = _first_choice(response)
            text = choice.text
        if not isinstance(text, str):
            raise GenerationError("bad_response", "the completion has no text")
        return text, choice.finish_reason, getattr(response, "usage", None)

    async def close(self) -> None:
        await self.client.close()


def _first_choice(response):
    choices = getattr(response, "choices", None)
    if not choices:
        raise GenerationError("bad_response", "the response has no choices")
    return choices[0]
