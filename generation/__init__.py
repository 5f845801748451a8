"""The one generation layer that evol and eval share: a config, a backend interface, Ray glue."""
from generation.base import Generation, Generator, SamplingParams, build_generator
from generation.config import GenerationConfig, SamplingConfig

__all__ = ["Generation", "Generator", "SamplingParams", "build_generator", "GenerationConfig", "SamplingConfig"]
