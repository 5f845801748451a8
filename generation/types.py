"""The types every backend and every job share: one request in, one generation out, asynchronously.

A job runs many request chains at once (every seed's evolve chain, every test-set answer) and
awaits each request on its own; the engine, not the caller, batches what is in flight.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from generation.config import SamplingConfig


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None  # this request's sampling seed: redone work draws the same where the engine allows

    @classmethod
    def from_config(cls, cfg: SamplingConfig, seed: int | None = None) -> "SamplingParams":
        return cls(cfg.temperature, cfg.top_p, cfg.max_tokens, seed)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool  # False when cut by max_tokens
    engine_seconds: float = 0.0  # this request's share of the engine's busy time (see BusyClock)


def clean_text(text: str) -> str:
    """Text every writer can encode: a surrogate pair (as a JSON body may escape it) becomes its
    character, a lone surrogate U+FFFD. A server's odd bytes must not fail a whole bucket's write."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class GenerationError(Exception):
    """A request that failed for good, after the backend's own retries: the caller records it
    (status `error` with `reason`) and goes on; it never fails the job."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EngineDown(Exception):
    """The engine (or endpoint) itself is down, not this request's fault: the caller must not record
    it as the seed's error, but stop and leave the work for a rerun."""


class Secret:
    """A credential handed from the driver to actors; its repr never shows the value, so it cannot
    end up in a log, a traceback or Ray's task listing."""

    def __init__(self, value: str | None):
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


class Generator(Protocol):
    """What evol and eval need from a model. One instance lives for a whole job in each actor."""

    model_name: str

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        """One user-turn prompt (rendered with the configured prompt format) and its answer.
        Raises GenerationError when the request cannot be served."""

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts in this model's tokenizer (for input limits and statistics)."""

    async def close(self) -> None:
        """Free the engine (end of job)."""


class BusyClock:
    """Shares an engine's busy time among the requests in flight (processor sharing).

    While n requests are in flight each one is charged dt / n, so the charges of all requests
    add up to the time the engine had work: accelerator-seconds that can be summed per round
    or per kept instruction, whatever the concurrency.
    """

    def __init__(self):
        self.in_flight = 0
        self.busy = 0.0  # seconds with at least one request in flight
        self._last = time.perf_counter()
        self._share = 0.0  # seconds accumulated per in-flight request since the clock started

    def _advance(self) -> float:
        now = time.perf_counter()
        if self.in_flight:
            self._share += (now - self._last) / self.in_flight
            self.busy += now - self._last
        self._last = now
        return self._share

    def start(self) -> float:
        mark = self._advance()
        self.in_flight += 1
        return mark

    def stop(self, mark: float) -> float:
        seconds = self._advance() - mark
        self.in_flight -= 1
        return seconds


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of answers, picked by the engine (a constrained answer), or, from an engine
    that could not constrain it, the free text it wrote (`option` None: the caller parses `text`).

    Backends that offer it have `async def choose(prompt, options, sampling) -> Choice` beside
    `generate` (generation/choice.py says how each one picks).
    """
    option: str | None
    method: str  # generation.choice: LOGPROBS, JSON_SCHEMA, TEXT or CANNED
    margin: float | None  # log P(option) - log P(best other option); None where the engine gives none
    text: str  # the option, or the free text of a TEXT answer
    prompt_tokens: int
    completion_tokens: int
    finished: bool = True  # False: a TEXT answer cut by max_tokens
    engine_seconds: float = 0.0
