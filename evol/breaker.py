"""A circuit breaker around an actor's engine: a dead engine stops the actor instead of turning every
chain into an error row.

A request can fail for its own sake (the server refused this prompt: a 400, a body without text) or
because the engine is down (it crashed, ran out of memory, a 5xx storm outlasted the client's
retries, the endpoint is unreachable). The first is that seed's error row. The second is not the
seed's fault: after `limit` such failures in a row the breaker opens, and every request of the actor
then raises EngineDown at once, so its buckets stay unwritten and a rerun does them.
"""
from __future__ import annotations

from generation.types import (
    Choice,
    EngineDown,
    Generation,
    GenerationError,
    Generator,
    SamplingParams,
)

# Reasons that are the request's own (the engine answered): an error row of that seed.
REQUEST_REASONS = frozenset({"http_400", "http_413", "http_422", "bad_response", "template_rewrites_prompt"})


def engine_failed(exc: Exception) -> bool:
    return not (isinstance(exc, GenerationError) and exc.reason in REQUEST_REASONS)


def describe(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if not isinstance(exc, GenerationError) else text[:300]


class CircuitBreaker:
    """Any generator, stopped after `limit` engine failures in a row (any answer resets the count)."""

    def __init__(self, inner: Generator, limit: int, role: str):
        self.inner, self.limit, self.role = inner, limit, role
        self.model_name = inner.model_name
        self.failures = 0
        self.cause: str | None = None

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        return await self._guarded(self.inner.generate, prompt, sampling)

    async def choose(self, prompt: str, options: list[str], sampling: SamplingParams) -> Choice:
        """The constrained answer (generation/choice.py), counted like a generation."""
        return await self._guarded(self.inner.choose, prompt, options, sampling)

    async def _guarded(self, request, *args):
        if self.cause is not None:
            raise EngineDown(self.cause)
        try:
            result = await request(*args)
        except Exception as exc:
            if not engine_failed(exc):
                self.failures = 0
                raise
            self.failures += 1
            if self.failures >= self.limit and self.cause is None:
                self.cause = (f"the {self.role} engine ({self.model_name}) failed {self.failures} requests in a row "
                              f"(last: {describe(exc)})")
            if self.cause is not None:
                raise EngineDown(self.cause) from exc
            raise
        self.failures = 0
        return result

    def spare_rows(self) -> int:
        """The engine's free rows (evolve.fallback_rewrites asks); none once the breaker is open."""
        spare = getattr(self.inner, "spare_rows", None)
        return spare() if spare and self.cause is None else 0

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    async def close(self) -> None:
        await self.inner.close()
