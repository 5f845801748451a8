"""Config of the generation layer, shared by every job that generates text."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from common.config import PathText, StrictModel
from common.models import SMALL_MODEL_ALIAS
from common.secrets import reference_problem

# A GenerationConfig's keys that change how fast or where an engine runs, not what it is asked: the
# evolve job's resume and the pipeline's stage fingerprints leave them out (batch composition may move
# a bf16 logit by a rounding step, as any timing can; that is not a different request).
GENERATION_EXECUTION_KEYS = ("concurrency", "max_chains", "rows_per_call", "calls_per_actor", "num_cpus", "num_gpus",
                             "torch_threads", "batch_size", "batch_wait_ms", "batching", "batch_refill",
                             "prefix_cache_tokens", "cache_tiers", "attn_implementation", "openai.max_in_flight", "openai.timeout_s",
                             "openai.max_retries", "openai.base_url", "openai.requests_per_minute",
                             "openai.tokens_per_minute", "vllm.gpu_memory_utilization", "vllm.max_num_seqs",
                             "vllm.enforce_eager", "vllm.enable_prefix_caching", "echo_latency_ms", "echo_crash_on",
                             "echo_crash_at_start", "echo_fail_after")


class SamplingConfig(StrictModel):
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 means greedy decoding")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=32768, description="new tokens per request")


class VllmConfig(StrictModel):
    """vLLM engine options (AsyncEngineArgs); the common ones named, any other under `extra`."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine; the actor reserves as many")
    max_model_len: int | None = Field(None, ge=16, description="None: the model's own")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_num_seqs: int | None = Field(None, ge=1, description="sequences batched at once; None: vLLM's default")
    enforce_eager: bool = Field(False, description="skip graph capture/compilation (faster start)")
    enable_prefix_caching: bool | None = Field(None, description="reuse the KV cache of shared prompt prefixes (the "
                                                                 "evolve templates share long ones); None: vLLM's "
                                                                 "default")
    extra: dict[str, Any] = Field(default_factory=dict, description="more AsyncEngineArgs, passed through as is")

    def scheduled_seqs(self) -> int:
        """The sequences one engine batches at once: max_num_seqs, or vLLM's default (256 on GPU)."""
        return self.max_num_seqs or 256


class OpenAIConfig(StrictModel):
    """An OpenAI-compatible endpoint (ChatGPT, a vLLM server, a Ray Serve LLM app)."""

    base_url: str | None = Field(None, description="None: the official OpenAI API")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable that holds the key "
                                                           "(the key itself never goes in a config)")
    api_key_secret: str | None = Field(None, description=(
        "where the driver reads the key instead of api_key_env: aws-secretsmanager:NAME[#FIELD], aws-ssm:NAME "
        "or file:PATH (on the node that runs the driver); keeps it out of the job's runtime env"))
    max_in_flight: int = Field(32, ge=1, description="requests in flight per actor")
    timeout_s: float = Field(120.0, gt=0.0, description="per request attempt")
    max_retries: int = Field(5, ge=0, description="the client's own retries (backoff) on 408/409/429/5xx, "
                                                  "timeouts and connection errors")
    tokenizer: str | None = Field(None, description="local model folder, alias or hub id whose tokenizer counts "
                                                    "input tokens; None: estimated as characters / 4")
    requests_per_minute: int | None = Field(
        None, ge=1, description="the whole job's request limit on this endpoint and model, shared by every actor "
                                "(one Ray actor holds the bucket); lowered by the endpoint's x-ratelimit-* "
                                "headers; None: no limit")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="the whole job's token limit, shared likewise: a request reserves its prompt "
                                "tokens + max_tokens and gives back what the endpoint's usage says it did not use; "
                                "None: no limit")

    @field_validator("api_key_secret")
    @classmethod
    def _secret_reference(cls, ref: str | None) -> str | None:
        problem = ref is not None and reference_problem(ref)
        if problem:
            raise ValueError(problem)
        return ref


class GenerationConfig(StrictModel):
    backend: Literal["hf", "vllm", "openai", "echo"] = Field(
        "hf", description="hf: transformers; vllm: vLLM's async engine in the actor; openai: an "
                          "OpenAI-compatible endpoint; echo: instant canned text (dry runs)")
    model: PathText = Field(SMALL_MODEL_ALIAS, description="bundled alias, local folder, s3:// folder or hub id; "
                                                      "for openai: the endpoint's model name")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the actor has a GPU")
    prompt_format: Literal["chat", "wizardlm", "vicuna_v1.1", "alpaca", "plain", "raw"] = Field(
        "chat", description="chat: the tokenizer's chat template (a tokenizer without one is an error); "
                            "wizardlm / vicuna_v1.1 / alpaca: that training format with the BOS training "
                            "puts first (wizardlm, vicuna_v1.1: as train.data.template trains them); plain: "
                            "'{prompt}\\n\\n### Response:' without BOS; raw: the prompt is already formatted")
    batch_size: int = Field(8, ge=1, description="hf: most prompts per batched generate()")
    batch_wait_ms: float = Field(5.0, ge=0.0, description="hf: how long a batch waits for more requests")
    batching: Literal["continuous", "static"] = Field(
        "continuous", description="hf: continuous: rows join and leave a running batch between decode steps, its "
                                  "KV cache kept (generation/continuous.py; LLaMA-family caches); static: one "
                                  "left-padded generate() per batch")
    prefix_cache_tokens: int = Field(
        8192, ge=0, description="hf, batching continuous: prompt-prefix tokens whose KV cache is kept, so that a prompt "
                                "beginning like an earlier one (the evolution templates, the chat header) prefills "
                                "only the rest (2 x layers x kv_heads x head_dim x 2 bytes each in bf16: 23 KB for "
                                "SmolLM2-135M, 128 KB for a 7B Llama); 0: off")
    cache_tiers: int = Field(
        2, ge=1, le=4, description="hf, batching continuous, grouped_decode attention: the running batch's rows sit in up "
                                   "to this many KV caches of their own widths, so that a row with a long prompt does "
                                   "not make every other row attend over its columns (generation/continuous.py, "
                                   "TieredBatch); 1: one cache as wide as the longest row")
    batch_refill: bool = Field(True, description="hf, batching static: a batch stops once half of its rows are done while a request "
                                                 "waits; its unfinished rows go on in the next batch (their text so "
                                                 "far prefilled again)")
    attn_implementation: Literal["auto", "grouped_decode", "sdpa", "eager"] = Field(
        "auto", description="hf: the attention kernel; auto: grouped_decode on CPU (SDPA for prefill, one matrix "
                            "product per KV head for each decode step: bf16 1.45x SDPA's tokens/s at batch 8, 1.6x at 16 "
                            "on the dev CPU, bench_hf_decode.py), sdpa on GPUs")
    max_chains: int | None = Field(
        None, ge=1, description="evolve: seed chains in flight per actor (each asks one request at a time), kept "
                                "full whenever that many are waiting; None: what fills the engine (hf 4 x batch_size, "
                                "vllm vllm.max_num_seqs or 256, openai openai.max_in_flight, echo 16)")
    rows_per_call: int = Field(8, ge=1, description="evaluate: input rows handed to an actor per call")
    calls_per_actor: int = Field(2, ge=1, description="evaluate: calls in flight per actor")
    concurrency: tuple[int, int] = Field((1, 1), description="[min, max] actors of the autoscaled pool")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs reserved per actor")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs reserved per actor (vllm: = tensor_parallel_size)")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads; default: all cores")
    max_prompt_tokens: int = Field(2048, ge=16, description="longer prompts are truncated from the left")
    seed: int = 0
    echo_latency_ms: float = Field(0.0, ge=0.0, description="echo: simulated latency per request (dry runs of a "
                                                            "slow engine)")
    echo_crash_on: str | None = Field(None, description="echo: fault injection for tests; the process dies when "
                                                        "a prompt contains this text")
    echo_crash_at_start: bool = Field(False, description="echo: fault injection for tests; the process dies while "
                                                         "the engine starts (as when loading runs out of memory)")
    echo_fail_after: int | None = Field(None, ge=0, description="echo: fault injection for tests; every request "
                                                                "after the first N of an engine raises (a dead engine)")
    vllm: VllmConfig = VllmConfig()
    openai: OpenAIConfig = OpenAIConfig()

    def with_local_model_pinned(self) -> "GenerationConfig":
        """A local engine's model folder made absolute (Ray workers run in folders of their own); an
        endpoint's model is the name it serves, whatever folders the driver's working folder holds."""
        if self.backend not in ("hf", "vllm"):
            return self
        from common.models import pin_local_model

        return self.model_copy(update={"model": pin_local_model(self.model)})

    def chains_in_flight(self) -> int:
        """`max_chains`, or the default that keeps this engine full."""
        if self.max_chains is not None:
            return self.max_chains
        if self.backend == "hf":
            return 4 * self.batch_size  # one batch generating; the next one chosen from three batches' worth by length
        if self.backend == "vllm":
            return self.vllm.scheduled_seqs()
        return self.openai.max_in_flight if self.backend == "openai" else 16

    @model_validator(mode="after")
    def _check(self):
        low, high = self.concurrency
        if low < 1 or high < low:
            raise ValueError(f"concurrency must be [min, max] with 1 <= min <= max, got {list(self.concurrency)}")
        if self.device == "cuda" and self.num_gpus == 0:
            raise ValueError("device cuda needs num_gpus > 0 so that Ray gives the actor a GPU")
        if self.backend == "vllm" and self.num_gpus and self.num_gpus != self.vllm.tensor_parallel_size:
            raise ValueError(f"vllm: num_gpus ({self.num_gpus:g}) must equal vllm.tensor_parallel_size "
                             f"({self.vllm.tensor_parallel_size}): one engine uses that many GPUs")
        return self
