"""EvolveConfig: everything the evolve job reads, validated before Ray or a model starts."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.config import PathText, StrictModel
from common.rows import BUNDLED_PREFIX
from common.ray_setup import RayConfig
from evol.elimination import MIN_JUDGE_TOKENS
from evol.operations import OPERATIONS
from evol.seeds import SeedFields
from evol.templates import template_overheads
from generation.config import GenerationConfig, SamplingConfig

TRUNCATING_BACKENDS = ("hf", "vllm")  # cut prompts to max_prompt_tokens themselves
LOCAL_BACKENDS = ("hf", "vllm")  # engines that run inside the evolve actor
PROMPT_MARGIN = 8  # tokens that merge or split differently where an instruction meets its template


class SeedsConfig(StrictModel):
    path: PathText = Field(f"{BUNDLED_PREFIX}self_instruct_seeds.jsonl",
                      description="file or folder (jsonl/json/parquet), local or s3://; bundled:NAME for package data")
    instruction_field: str = "instruction"
    input_field: str | None = Field("input", description="optional Alpaca-style context appended to the instruction")
    response_field: str | None = Field("output", description="optional human answer; generated when absent")
    id_field: str | None = Field("id", description="optional stable id; default FILE:LINE")
    limit: int | None = Field(None, ge=1, description="use only the first N rows, files in sorted order and "
                                                      "rows in file order: the same rows every run")
    max_instruction_tokens: int = Field(1024, ge=1, description="longer seeds are quarantined")
    dedupe_partitions: int = Field(8, ge=1, description="partitions of the duplicate-id shuffle")
    piece_bytes: int = Field(64 << 20, ge=1, description="jsonl files are read and parsed in pieces of about "
                                                         "this many bytes (whole lines), never whole")

    def fields(self) -> SeedFields:
        return SeedFields(self.instruction_field, self.input_field, self.response_field, self.id_field)


class EvolveSettings(StrictModel):
    rounds: int = Field(4, ge=1, le=20, description="M in the paper")
    seed: int = Field(0, description="seeds the per-row operation choice")
    operations: tuple[str, ...] = Field(OPERATIONS, description="subset of the six operations to draw from")
    evolve_sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=256)
    respond_sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=512)
    judge_sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=MIN_JUDGE_TOKENS)
    equality_check: Literal["constrained", "text"] = Field(
        "constrained", description="constrained: the judge picks Equal or Not Equal (log-probabilities of both "
                                   "answers; an OpenAI-compatible judge: a JSON schema or logprobs where offered, "
                                   "else its text); text: parse the judge's free text")
    equality_calibration: Literal["none", "content_free"] = Field(
        "none", description="content_free: a constrained verdict from log-probabilities is corrected by the judge's "
                            "lean toward one answer on a content-free pair (contextual calibration, Zhao et al. "
                            "2021), measured once per actor; for small local judges that answer Equal to anything")
    rounds_ahead: int = Field(
        1, ge=0, le=20, description="later rounds of a chain that may start while a candidate's answer and "
                                     "equality check run, evolving it as if kept (its rewrite passed the text "
                                     "rules): a chain keeps more requests in the engine and the records are the "
                                     "same; when the candidate is then eliminated the rounds started after it are "
                                     "cancelled and their cost added to its record. Settled rounds count for none: "
                                     "the seed's own answer, and a candidate whose equality check has spoken (its "
                                     "parent goes on at once if the check eliminated it). 0: one round after the "
                                     "other (a paid endpoint that eliminates often); 20: no limit")
    fallback_rewrites: bool = Field(
        True, description="while the engine has rows free (hf, vLLM: never a paid endpoint), a chain also starts "
                          "the next round's rewrite of the instruction it is evolving, in case the candidate is "
                          "eliminated and the parent evolves again; the same request, so the records are the same. "
                          "Cancelled when not needed, its cost added to the record that made it so")
    train_on_truncated_responses: bool = Field(
        False, description="put responses cut by respond_sampling.max_tokens in the training set "
                           "(they are flagged `response_truncated` and counted either way)")
    engine_failure_limit: int = Field(
        16, ge=1, description="an actor whose engine fails this many requests in a row (crashed, out of memory, an "
                              "endpoint down past its retries) stops: its buckets stay unwritten, the job ends "
                              "with the cause, and a rerun does them")
    retry_errors: bool = Field(
        True, description="a rerun on the same output retries the chains that ended in an error (a failed request, "
                          "a worker that died), going on from their last finished round; false keeps them as they are")

    @field_validator("judge_sampling")
    @classmethod
    def _verdict_fits(cls, sampling: SamplingConfig) -> SamplingConfig:
        if sampling.max_tokens < MIN_JUDGE_TOKENS:
            raise ValueError(f"max_tokens {sampling.max_tokens} can cut the verdict itself; use at least "
                             f"{MIN_JUDGE_TOKENS}")
        return sampling

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, ops: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [op for op in ops if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation {unknown[0]!r}; choose from {', '.join(OPERATIONS)}")
        if not ops or len(set(ops)) != len(ops):
            raise ValueError("operations must be a non-empty list without repeats")
        return ops


class OutputConfig(StrictModel):
    path: PathText = Field("outputs/evolve-local", description="local folder or s3://bucket/prefix")
    overwrite: bool = Field(False, description="start over: delete the folder's earlier evolve run (only a folder "
                                                "an evolve run made); false: a rerun resumes it")
    buckets: int = Field(256, ge=1, le=99999, description="seeds are processed and written in this many "
                                                          "buckets; a killed run redoes only unfinished ones")


class CostConfig(StrictModel):
    """Prices, the budget and what `--estimate` assumes; changes no result (a rerun may change it).

    Money = token prices x tokens (an API endpoint's bill) + the accelerator-hour price x engine time
    (your own engines): set the prices of what you pay for."""

    price_per_accelerator_hour: float | None = Field(
        None, ge=0.0, description="price of one accelerator (a GPU; on CPU: one actor's engine) per hour, in any "
                                  "currency; None: no money figure")
    price_per_million_input_tokens: float | None = Field(
        None, ge=0.0, description="an API endpoint's price of a million prompt tokens; None: not priced")
    price_per_million_output_tokens: float | None = Field(
        None, ge=0.0, description="an API endpoint's price of a million generated tokens; None: not priced")
    engine_tokens_per_second: float | None = Field(
        None, gt=0.0, description="generated tokens per second of one engine (a run's summary gives it): lets "
                                  "--estimate turn tokens into accelerator-hours; None: tokens only")
    max_money: float | None = Field(
        None, gt=0.0, description="budget of the whole output folder, all runs together: no new bucket of seeds "
                                  "starts once the money spent plus the projected cost of the buckets in flight "
                                  "reaches it; a rerun with a higher budget does the rest; None: no budget")
    max_tokens: int | None = Field(
        None, ge=1, description="the same budget in tokens (prompt + generated, every request); None: no budget")

    @model_validator(mode="after")
    def _budget_is_priced(self):
        prices = (self.price_per_accelerator_hour, self.price_per_million_input_tokens,
                  self.price_per_million_output_tokens)
        if self.max_money is not None and all(price is None for price in prices):
            raise ValueError("max_money needs a price: set price_per_million_input_tokens / "
                             "price_per_million_output_tokens (an API endpoint) or price_per_accelerator_hour")
        return self


class DedupeConfig(StrictModel):
    """Near-duplicate instructions over the whole output, after the last bucket (evol/dedupe.py)."""

    enabled: bool = Field(True, description="mark near-copies status=duplicate (duplicate_of: the kept one) and "
                                            "leave them out of the training set")
    threshold: float = Field(0.7, gt=0.0, le=1.0, description="Jaccard similarity of word shingles at which two "
                                                              "instructions are near-duplicates")
    shingle_words: int = Field(3, ge=1, le=16, description="words per shingle (Unicode words; an ideograph is a word)")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (LSH bands and rows follow "
                                                          "from the threshold)")
    seed: int = Field(0, description="seeds the MinHash permutations")
    in_process_records: int = Field(20_000, ge=0, description="an output of at most this many records is checked "
                                                              "in the driver (same functions, same result; about "
                                                              "where 2 CPUs of Ray start to be faster); 0: always "
                                                              "on Ray")


class DecontaminationConfig(StrictModel):
    """Training rows that copy an evaluation item, by word n-gram overlap (evol/contamination.py)."""

    enabled: bool = Field(True, description="mark rows status=contaminated (contaminated_by: set:item id) and "
                                            "leave them out of the training set")
    wizardlm_testset: bool = Field(True, description="check against the bundled WizardLM test set (the evaluate "
                                                     "job's default)")
    paths: list[str] = Field(default_factory=list, description="more evaluation sets: jsonl/json/parquet files or "
                                                               "folders, local or s3://")
    text_fields: list[str] = Field(
        ["Instruction", "instruction", "prompt", "question", "input", "turns", "output", "answer", "reference",
         "canonical_solution"], description="fields of an item whose text is checked (strings or lists of strings)")
    id_fields: list[str] = Field(["idx", "id", "task_id", "question_id"], description="the first present names "
                                                                                     "the item; else its line")
    ngram: int = Field(13, ge=3, le=64, description="words per n-gram; an item with fewer words counts when all "
                                                    "of them appear in order")


class EvolveConfig(StrictModel):
    seeds: SeedsConfig = SeedsConfig()
    evolve: EvolveSettings = EvolveSettings()
    generation: GenerationConfig = GenerationConfig()
    judge: GenerationConfig | None = Field(
        None, description="the equality check's own model/backend (the paper used ChatGPT); None: `generation`")
    output: OutputConfig = OutputConfig()
    cost: CostConfig = CostConfig()
    dedupe: DedupeConfig = DedupeConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _one_name_for_chains_in_flight(self):
        """Evaluate's rows_per_call x calls_per_actor are not evolve's: one key says how many chains run."""
        for key, gen in (("generation", self.generation), ("judge", self.judge)):
            for name in ("rows_per_call", "calls_per_actor"):
                if gen is not None and name in gen.model_fields_set:
                    raise ValueError(f"{key}.{name} is not used by evolve; set {key}.max_chains (seed chains in "
                                     "flight per actor) instead")
        return self

    @model_validator(mode="after")
    def _a_local_judge_has_devices_of_its_own(self):
        """A local judge (hf, vllm) is built inside each writer actor, whose reservation then covers both
        engines (`actor_resources`); two engines that use GPUs in one actor would both land on
        its first GPU, so only one of them may."""
        judge, writer = self.judge, self.generation
        if judge is None or judge.backend not in LOCAL_BACKENDS or writer.backend not in LOCAL_BACKENDS:
            return self
        if writer.num_gpus > 0 and (judge.num_gpus > 0 or judge.device != "cpu"):
            raise ValueError("judge.device: a local judge runs in the writer's actor, whose GPUs the writer uses; set "
                             "judge.device=cpu and judge.num_gpus=0, or use an openai judge (e.g. a vLLM server)")
        if judge.num_gpus > 0 and writer.device != "cpu":
            raise ValueError("generation.device: the writer runs in the actor of a local judge on GPUs; set "
                             "generation.device=cpu, or give the judge no GPUs")
        return self

    @model_validator(mode="after")
    def _user_text_stays_text(self):
        """Evolve prompts hold seed text: `raw` would tokenise a seed's "<|im_start|>" as a real turn."""
        for key, gen in (("generation", self.generation), ("judge", self.judge)):
            if gen is not None and gen.prompt_format == "raw":
                raise ValueError(f"{key}.prompt_format: raw is not allowed for evolve (its prompts hold seed text, "
                                 "whose special-token strings must stay text); use chat or plain")
        return self

    @model_validator(mode="after")
    def _prompts_fit(self):
        """At least one token per word: a template that cannot fit by its words alone is refused here;
        the driver repeats the check with the model's tokenizer (evol.preflight)."""
        problem = prompt_budget_problem(self, [len(t.split()) for t in template_overheads()],
                                        "words (at least as many tokens)")
        if problem:
            raise ValueError(problem)
        return self


def prompt_budget_problem(cfg: EvolveConfig, overheads: list[int], unit: str) -> str | None:
    """Why the longest instruction plus the longest template would not fit the prompt limit (the
    backend would then cut the template's own rules away), or None.

    `overheads`: the sizes of templates.template_overheads(), evolve prompts then the equality
    prompt. A parent is at most `longest` tokens (a seed, or a kept rewrite); the equality prompt
    holds a parent and a rewrite."""
    rewrite = cfg.evolve.evolve_sampling.max_tokens
    longest = max(cfg.seeds.max_instruction_tokens, rewrite)
    judge_key = "judge" if cfg.judge is not None else "generation"
    needs = [("generation", cfg.generation, "an evolve prompt", max(overheads[:-1]), longest),
             (judge_key, cfg.judge or cfg.generation, "the equality prompt", overheads[-1], longest + rewrite)]
    for key, gen, what, template, text in needs:
        need = template + text + PROMPT_MARGIN
        if gen.backend in TRUNCATING_BACKENDS and need > gen.max_prompt_tokens:
            return (f"{key}.max_prompt_tokens: {gen.max_prompt_tokens} cannot hold {what}: {template} {unit} of "
                    f"template + {text} tokens of instructions (seeds.max_instruction_tokens, "
                    f"evolve.evolve_sampling.max_tokens) + {PROMPT_MARGIN} = {need}")
    return None


def actor_resources(cfg: EvolveConfig) -> tuple[float, float]:
    """CPUs and GPUs one actor reserves: its writer's, plus a local judge's (built in the same actor)."""
    cpus, gpus = cfg.generation.num_cpus, cfg.generation.num_gpus
    if cfg.judge is not None and cfg.judge.backend in LOCAL_BACKENDS:
        cpus, gpus = cpus + cfg.judge.num_cpus, gpus + cfg.judge.num_gpus
    return cpus, gpus
