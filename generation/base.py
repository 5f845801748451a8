"""The backend interface: prompts in, texts and token counts out. Backends register by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from generation.config import GenerationConfig, SamplingConfig


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_tokens: int

    @classmethod
    def from_config(cls, cfg: SamplingConfig) -> "SamplingParams":
        return cls(cfg.temperature, cfg.top_p, cfg.max_tokens)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool  # False when cut by max_tokens


class Generator(Protocol):
    """What evol and eval need from a model. One instance lives for a whole job in each actor."""

    model_name: str

    def generate(self, prompts: list[str], sampling: SamplingParams) -> list[Generation]:
        """One user-turn prompt per item, answers in the same order."""

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts in this model's tokenizer (for input limits and statistics)."""


def _build_hf(cfg: GenerationConfig) -> Generator:
    from generation.hf import HFGenerator

    return HFGenerator(cfg)


def _build_echo(cfg: GenerationConfig) -> Generator:
    from generation.echo import EchoGenerator

    return EchoGenerator(cfg)


BACKENDS: dict[str, Callable[[GenerationConfig], Generator]] = {"hf": _build_hf, "echo": _build_echo}


def build_generator(cfg: GenerationConfig) -> Generator:
    return BACKENDS[cfg.backend](cfg)


def check_model_available(cfg: GenerationConfig) -> None:
    """Cheap checks on the driver, so a wrong model path fails before any actor loads it."""
    from common.models import check_model

    if cfg.backend == "hf":
        check_model(cfg.model, "generation.model")
