"""An instant backend with canned answers: for dry runs and orchestration benchmarks, not quality."""
from __future__ import annotations

import asyncio
import hashlib
import os

from generation.config import GenerationConfig
from generation.choice import CANNED
from generation.types import Choice, Generation, SamplingParams


class EchoGenerator:
    def __init__(self, cfg: GenerationConfig):
        if cfg.echo_crash_at_start:
            os._exit(17)  # a process killed while loading its engine (out of memory, a native crash)
        self.model_name = "echo"
        self.cfg = cfg
        self.requests = 0

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        if self.cfg.echo_crash_on and self.cfg.echo_crash_on in prompt:
            os._exit(17)  # a poison request: the worker process dies, as with a segfault in an engine
        self.requests += 1
        if self.cfg.echo_latency_ms:
            await asyncio.sleep(self.cfg.echo_latency_ms / 1000)
        if self.cfg.echo_fail_after is not None and self.requests > self.cfg.echo_fail_after:
            raise RuntimeError("echo engine is dead (echo_fail_after)")
        tag = hashlib.blake2b(prompt.encode(), digest_size=4).hexdigest()
        words = f"Canned answer {tag} with some detail about the topic at hand".split()[:sampling.max_tokens]
        return Generation(" ".join(words), prompt_tokens=len(prompt.split()), completion_tokens=len(words),
                          finished=True)

    async def choose(self, prompt: str, options: list[str], sampling: SamplingParams) -> Choice:
        """The last option, after the same latency and fault injection as `generate` (a dry run:
        for the equality check, Not Equal, which keeps every candidate)."""
        gen = await self.generate(prompt, sampling)
        return Choice(options[-1], CANNED, None, options[-1], gen.prompt_tokens, completion_tokens=0)

    async def close(self) -> None:
        pass
