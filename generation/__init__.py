"""The one generation layer that evol and eval share: config, async backend interface, registry."""
from generation.config import GenerationConfig, OpenAIConfig, SamplingConfig, VllmConfig
from generation.registry import build_generator, check_model_available, driver_api_key, generate_all
from generation.types import Generation, GenerationError, Generator, SamplingParams

__all__ = ["Generation", "GenerationError", "Generator", "SamplingParams", "build_generator",
           "check_model_available", "driver_api_key", "generate_all", "GenerationConfig", "OpenAIConfig", "SamplingConfig",
           "VllmConfig"]
