"""OpenAI-compatible backend: the official `AsyncOpenAI` client against any endpoint.

Retries with backoff on 408/409/429/5xx, timeouts and dropped connections are the client's
own (`max_retries`); a request that still fails is a GenerationError with a short reason,
which the job records. The API key is read from the environment variable named in config
and is scrubbed from every error text. With `requests_per_minute` / `tokens_per_minute` set, every
HTTP attempt (the client's retries too) first takes its turn from the job's shared limiter
(generation/ratelimit.py), which also reads every response's rate-limit headers and 429s.
"""
from __future__ import annotations

import asyncio
import contextvars
import os
from dataclasses import dataclass, field

from generation.choice import (JSON_SCHEMA, LOGPROBS, TEXT, TOP_LOGPROBS, first_token_choice, json_answer,
                               response_format)
from generation.config import GenerationConfig
from generation.prompts import render_prompt, text_token_ids
from generation.ratelimit import shared_limiter
from generation.types import Choice, Generation, GenerationError, SamplingParams, Secret

NO_KEY = "EMPTY"  # what a self-hosted server without --api-key accepts
CHARS_PER_TOKEN = 4  # the estimate used when no tokenizer is configured
JSON_TOKENS = 48  # room for {"answer": "..."} with the whitespace a grammar allows
RATE_HEADERS = ("retry-after", "retry-after-ms", *(f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset")
                                                  for kind in ("requests", "tokens")))


@dataclass
class Reservation:
    """What one request reserves from the limiter on each attempt, and the last headers it saw."""
    tokens: int
    headers: dict = field(default_factory=dict)


# The request being sent by this task: the client's HTTP hooks run inside the awaiting task.
_RESERVATION: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar("reservation", default=None)


def rate_headers(response) -> dict:
    return {name: response.headers[name] for name in RATE_HEADERS if name in response.headers}


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
        self.limiter = shared_limiter(cfg)
        self.client = AsyncOpenAI(api_key=key, base_url=cfg.openai.base_url, timeout=cfg.openai.timeout_s,
                                  max_retries=cfg.openai.max_retries, http_client=self._http_client())
        self.tokenizer = None
        if cfg.openai.tokenizer:
            from transformers import AutoTokenizer

            from common.models import resolve_model

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.openai.tokenizer))
        self._slots: asyncio.Semaphore | None = None

    def _http_client(self):
        """None (the client's own) without a limit; else one whose hooks wait for the limiter before
        every attempt and report every response's rate-limit headers."""
        if self.limiter is None:
            return None
        from openai import DefaultAsyncHttpxClient

        return DefaultAsyncHttpxClient(event_hooks={"request": [self._take_turn], "response": [self._read_limits]})

    async def _take_turn(self, request) -> None:
        reservation = _RESERVATION.get()
        await self.limiter.acquire(reservation.tokens if reservation else 1)

    async def _read_limits(self, response) -> None:
        headers = rate_headers(response)
        if response.status_code == 429:
            self.limiter.rejected(headers)
        elif (reservation := _RESERVATION.get()) is not None:
            reservation.headers = headers

    def count_tokens(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [-(-len(text) // CHARS_PER_TOKEN) for text in texts]
        return [len(ids) for ids in text_token_ids(self.tokenizer, texts)]

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key != NO_KEY else text

    async def _call(self, max_tokens: int, request, prompt: str, *args):
        """`request(prompt, *args)` within max_in_flight, under a rate-limiter reservation of the prompt's
        tokens plus `max_tokens` (returned with the result, for the caller to settle with the tokens
        used); a client error becomes a GenerationError whose detail holds no key."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.openai.max_in_flight)
        async with self._slots:
            reservation = Reservation(self.count_tokens([prompt])[0] + max_tokens) if self.limiter else None
            token = _RESERVATION.set(reservation)
            try:
                return await request(prompt, *args), reservation
            except GenerationError:
                raise
            except Exception as exc:
                detail = self._scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                raise GenerationError(error_reason(exc), detail[:300]) from None
            finally:
                _RESERVATION.reset(token)

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        (text, finish, usage), reservation = await self._call(sampling.max_tokens, self._request, prompt, sampling)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        gen = Generation(text=text.strip(),
                         prompt_tokens=prompt_tokens if prompt_tokens is not None else self.count_tokens([prompt])[0],
                         completion_tokens=(completion_tokens if completion_tokens is not None
                                            else self.count_tokens([text])[0]),
                         finished=finish != "length")
        if reservation is not None:
            self.limiter.settle(reservation.tokens, gen.prompt_tokens + gen.completion_tokens, reservation.headers)
        return gen

    async def _request(self, prompt: str, sampling: SamplingParams):
        """(text, finish_reason, usage) from the chat endpoint, or the completions endpoint for
        plain/raw prompt formats (the prompt is already the text the model continues)."""
        common = dict(model=self.cfg.model, temperature=sampling.temperature, top_p=sampling.top_p,
                      max_tokens=sampling.max_tokens)
        if sampling.seed is not None:
            common["seed"] = sampling.seed  # honoured by vLLM servers; best effort on OpenAI's own
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

    # --- constrained answers (generation/choice.py) -----------------------------------------------

    async def choose(self, prompt: str, options: list[str], sampling: SamplingParams) -> Choice:
        """One of `options`: a JSON-schema answer where the server supports it, decided by the first
        token's logprobs where it offers them, else its free text (method TEXT, parsed by the caller)."""
        (text, finish, usage, tokens), reservation = await self._call(
            max(sampling.max_tokens, JSON_TOKENS), self._choice_request, prompt, options, sampling)  # rate-limited too
        counts = dict(prompt_tokens=getattr(usage, "prompt_tokens", None) or self.count_tokens([prompt])[0],
                      completion_tokens=getattr(usage, "completion_tokens", None) or self.count_tokens([text])[0])
        if reservation is not None:
            self.limiter.settle(reservation.tokens, counts["prompt_tokens"] + counts["completion_tokens"],
                                reservation.headers)
        answer = json_answer(text, options)
        if answer is not None:
            lead = first_token_choice(tokens, answer[1], options) if tokens else None
            margin = lead[1] if lead is not None and lead[0] == answer[0] else None
            return Choice(answer[0], JSON_SCHEMA, margin, answer[0], **counts)
        lead = first_token_choice(tokens, len(text) - len(text.lstrip()), options) if tokens else None
        if lead is not None:
            return Choice(lead[0], LOGPROBS, lead[1], text.strip(), **counts)
        return Choice(None, TEXT, None, text.strip(), finished=finish != "length", **counts)

    async def _choice_request(self, prompt: str, options: list[str], sampling: SamplingParams):
        """(text, finish_reason, usage, tokens) asking for what this server is not known to refuse.
        A refused feature (HTTP 400/422) or one the server ignored is remembered and not asked again.
        The completions endpoint (plain/raw prompts) is asked for text only."""
        import openai

        if self.cfg.prompt_format != "chat":
            text, finish, usage = await self._request(prompt, sampling)
            return text, finish, usage, None
        supports = self.__dict__.setdefault("_supports", {})
        while True:
            wanted = [feature for feature in (JSON_SCHEMA, LOGPROBS) if supports.get(feature) is not False]
            extra = ({"response_format": response_format(options)} if JSON_SCHEMA in wanted else {}) | (
                {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if LOGPROBS in wanted else {})
            tokens = max(sampling.max_tokens, JSON_TOKENS) if JSON_SCHEMA in wanted else sampling.max_tokens
            if sampling.seed is not None:
                extra["seed"] = sampling.seed
            try:
                response = await self.client.chat.completions.create(
                    model=self.cfg.model, messages=[{"role": "user", "content": prompt}],
                    temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=tokens, **extra)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                # only a refusal that names the feature turns it off; any other (a prompt past the context
                # length) is this request's own error, and the features stay on for the rest of the job
                refused = [feature for feature in wanted if any(word in str(exc).lower() for word in FEATURE_WORDS[feature])]
                if not refused:
                    raise
                supports[refused[-1]] = False
                continue
            choice = _first_choice(response)
            text = choice.message.content if choice.message is not None else None
            if not isinstance(text, str):
                raise GenerationError("bad_response", "the completion has no text")
            tokens = _tokens(choice)
            if LOGPROBS in wanted and tokens is None:
                supports[LOGPROBS] = False  # asked for, not given
            if JSON_SCHEMA in wanted and not text.lstrip().startswith("{"):
                supports[JSON_SCHEMA] = False  # the server ignored the schema
            return text, choice.finish_reason, getattr(response, "usage", None), tokens


# What a server's refusal says when it is the feature it refuses ("response_format is not supported",
# "logprobs are not allowed", vLLM's "guided decoding ..."); a context-length error names none of them.
FEATURE_WORDS = {JSON_SCHEMA: ("response_format", "json_schema", "json schema", "guided", "structured output"),
                 LOGPROBS: ("logprob",)}


def _tokens(choice) -> list | None:
    """The generated tokens with their logprobs and alternatives (generation.choice.Token), if given."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [(t.token, t.logprob, [(a.token, a.logprob) for a in (t.top_logprobs or [])]) for t in content]


def _first_choice(response):
    choices = getattr(response, "choices", None)
    if not choices:
        raise GenerationError("bad_response", "the response has no choices")
    return choices[0]
