"""Backends by name, and the one way every job builds a generator."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Callable

from common.models import check_model
from generation.config import GenerationConfig
from generation.types import BusyClock, Choice, Generation, Generator, SamplingParams, Secret


def _build_hf(cfg: GenerationConfig, key: Secret | None) -> Generator:
    from generation.hf import HFGenerator

    return HFGenerator(cfg)


def _build_vllm(cfg: GenerationConfig, key: Secret | None) -> Generator:
    from generation.vllm import VllmGenerator

    return VllmGenerator(cfg)


def _build_openai(cfg: GenerationConfig, key: Secret | None) -> Generator:
    from generation.openai_api import OpenAIGenerator

    return OpenAIGenerator(cfg, key)


def _build_echo(cfg: GenerationConfig, key: Secret | None) -> Generator:
    from generation.echo import EchoGenerator

    return EchoGenerator(cfg)


BACKENDS: dict[str, Callable[[GenerationConfig, Secret | None], Generator]] = {
    "hf": _build_hf, "vllm": _build_vllm, "openai": _build_openai, "echo": _build_echo}


class Metered:
    """Any backend, with each generation charged its share of the engine's busy time."""

    def __init__(self, inner: Generator):
        self.inner = inner
        self.model_name = inner.model_name
        self.clock = BusyClock()

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        mark = self.clock.start()
        try:
            gen = await self.inner.generate(prompt, sampling)
        finally:
            seconds = self.clock.stop(mark)
        return replace(gen, engine_seconds=seconds)

    async def choose(self, prompt: str, options: list[str], sampling: SamplingParams) -> Choice:
        """The backend's constrained answer (generation/choice.py), charged like a generation."""
        mark = self.clock.start()
        try:
            choice = await self.inner.choose(prompt, options, sampling)
        finally:
            seconds = self.clock.stop(mark)
        return replace(choice, engine_seconds=seconds)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def spare_rows(self) -> int:
        """Rows the engine has free now; 0 from a backend that does not say (an endpoint that bills by the
        token: nothing is asked of it on speculation)."""
        spare = getattr(self.inner, "spare_rows", None)
        return spare() if spare else 0

    async def close(self) -> None:
        await self.inner.close()


def build_generator(cfg: GenerationConfig, api_key: Secret | None = None) -> Metered:
    """`api_key`: the driver's key for an openai backend (see `driver_api_key`); None reads this
    process's environment."""
    return Metered(BACKENDS[cfg.backend](cfg, api_key))


def driver_api_key(cfg: GenerationConfig) -> Secret | None:
    """Read on the driver, where the user set it, and handed to actors as a Secret: workers on
    other nodes need not have the variable."""
    if cfg.backend != "openai":
        return None
    from generation.openai_api import api_key

    return api_key(cfg)


def generate_all(generator: Generator, prompts: list[str], sampling: SamplingParams) -> list[Generation]:
    """All prompts at once from synchronous code (a script, a training report); answers in order."""
    async def run():
        return await asyncio.gather(*(generator.generate(p, sampling) for p in prompts))

    return asyncio.run(run())


def check_model_available(cfg: GenerationConfig, key: str = "generation") -> None:
    """Cheap checks on the driver, so a wrong model path fails before any actor loads it."""
    if cfg.backend in ("hf", "vllm"):
        check_model(cfg.model, f"{key}.model")
    if cfg.backend == "openai":
        from common.config import UserError
        from generation.openai_api import api_key

        if api_key(cfg, key).reveal() is None:
            raise UserError(f"{key}.openai.api_key_env: environment variable {cfg.openai.api_key_env} is not set "
                            "(needed for the official endpoint; set openai.base_url for a self-hosted one)")
        if cfg.openai.tokenizer:
            check_model(cfg.openai.tokenizer, f"{key}.openai.tokenizer")
