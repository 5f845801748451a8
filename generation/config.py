"""Config of the generation layer, shared by every job that generates text."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.config import StrictModel
from common.models import SMALL_MODEL_ALIAS


class SamplingConfig(StrictModel):
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 means greedy decoding")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=32768, description="new tokens per request")


class GenerationConfig(StrictModel):
    backend: Literal["hf", "echo"] = Field(
        "hf", description="hf: transformers in a Ray Data actor pool; echo: instant canned text (dry runs)")
    model: str = Field(SMALL_MODEL_ALIAS, description="bundled alias, local folder, s3:// folder or hub id")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the actor has a GPU")
    prompt_format: Literal["chat", "plain", "raw"] = Field(
        "chat", description="chat: the tokenizer's chat template; plain: '{prompt}\\n\\n### Response:'; "
                            "raw: the prompt is already formatted")
    batch_size: int = Field(8, ge=1, description="rows per actor call and per batched generate()")
    concurrency: tuple[int, int] = Field((1, 1), description="[min, max] actors of the autoscaled pool")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs reserved per actor")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs reserved per actor")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads; default: all cores")
    max_prompt_tokens: int = Field(2048, ge=16, description="longer prompts are truncated from the left")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        low, high = self.concurrency
        if low < 1 or high < low:
            raise ValueError(f"concurrency must be [min, max] with 1 <= min <= max, got {list(self.concurrency)}")
        if self.device == "cuda" and self.num_gpus == 0:
            raise ValueError("device cuda needs num_gpus > 0 so that Ray gives the actor a GPU")
        return self
