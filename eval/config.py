"""EvaluateConfig: everything the evaluate job reads, validated before Ray or a model starts.

Three generation roles, each a full GenerationConfig with its own backend, model and prompt
format: the candidate (e.g. the train job's export, prompted the way it was trained), the
baseline (its base model, another checkpoint or an endpoint) and the judge.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.config import PathText, StrictModel
from common.ray_setup import RayConfig
from common.rows import BUNDLED_PREFIX
from eval.budget import TRUNCATING_BACKENDS
from eval.testset import ItemFields
from generation.config import GenerationConfig, SamplingConfig


class ItemsConfig(StrictModel):
    """Where the test items come from and which field holds what (the defaults read WizardLM's set)."""

    path: PathText = Field(f"{BUNDLED_PREFIX}wizardlm_testset.jsonl",
                      description="file or folder (jsonl/json/parquet), local or s3://; bundled:NAME = eval/data")
    instruction_field: str = Field("Instruction", description="field holding the instruction")
    id_field: str | None = Field("idx", description="stable id (answers are cached by it); None: FILE:LINE")
    category_field: str | None = Field("Skill", description="category/skill for per-category ratios; None: none")
    difficulty_field: str | None = Field("Difficulty", description="integer 1-10 for the bands; None: none")
    reference_field: str | None = Field(None, description="reference answer shown to the judge; None: none")
    per_category: int | None = Field(None, ge=1, description="at most N items of each category, in file order")
    limit: int | None = Field(None, ge=1, description="at most N items in all (after per_category)")

    def fields(self) -> ItemFields:
        return ItemFields(instruction=self.instruction_field, id=self.id_field, category=self.category_field,
                          difficulty=self.difficulty_field, reference=self.reference_field)


class ReportConfig(StrictModel):
    bootstrap_samples: int = Field(1000, ge=1, description="resamples of the items for the ratio's interval")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="level of the bootstrap interval")
    seed: int = Field(0, description="seeds the bootstrap, so a rerun prints the same interval")
    threshold: float = Field(0.9, gt=0.0, description="per-category bar (the paper counts skills at >= 90%)")
    note: str | None = Field(None, description="a caveat printed under the headline (e.g. a weak judge)")


class EvolutionConfig(StrictModel):
    """The evolution analysis of an evolve job's output (length, pass rates, eliminations per round)."""

    output: PathText | None = Field(None, description="an evolve job's output folder; None: no evolution analysis")
    difficulty_per_round: int = Field(0, ge=0, description="kept instructions per round the judge rates 1-10 "
                                                           "(the paper's complexity analysis); 0: off")
    difficulty_sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16)
    seed: int = Field(0, description="picks which instructions of each round are rated")


class JudgeConfig(GenerationConfig):
    """The judge: a generation section plus how its verdicts are counted (FastChat's rules)."""

    require_both_orders: bool = Field(True, description="pairwise: an item counts only when the verdicts of both "
                                                        "orders are readable (else the judge's position bias is not "
                                                        "cancelled for it); the report counts the items dropped")
    disagreement_as_tie: bool = Field(False, description="pairwise: when the two orders pick different winners "
                                                         "the item is a tie (FastChat's rule); its scores still "
                                                         "count in the score ratio")


class OutputConfig(StrictModel):
    path: PathText = Field("outputs/evaluate-local", description="local folder or s3://bucket/prefix")
    overwrite: bool = Field(False, description="false: keep cached answers and replace the report; "
                                               "true: delete the folder first (answers too)")


class EvaluateConfig(StrictModel):
    testset: ItemsConfig = ItemsConfig()
    mode: Literal["pairwise", "single"] = Field(
        "pairwise", description="pairwise: the judge scores the candidate's and the baseline's answers side by side, "
                                "in both orders; single: it grades each answer alone from 1 to 10 (MT-bench's "
                                "single-answer grading), for a model without a baseline")
    candidate: GenerationConfig = Field(description="the model being measured")
    baseline: GenerationConfig | None = Field(GenerationConfig(), description="the model compared against; "
                                              "null: none (mode single only)")
    judge: JudgeConfig = JudgeConfig()
    answer_sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=512)
    judge_sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=128)
    judge_prefill: bool = Field(False, description="start every verdict with 'Score A:' and every difficulty "
                                                   "rating with 'Difficulty:' (judge.prompt_format must be "
                                                   "plain): lets a small local judge that ignores the format "
                                                   "give scores; the report says so. Off for real judges")
    report: ReportConfig = ReportConfig()
    evolution: EvolutionConfig = EvolutionConfig()
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _check(self):
        if self.judge_prefill and self.judge.prompt_format != "plain":
            raise ValueError("judge_prefill needs judge.prompt_format=plain (the reply is started after "
                             f"'### Response:'), got {self.judge.prompt_format!r}")
        if self.baseline is None and self.mode == "pairwise":
            raise ValueError("baseline: mode pairwise compares the candidate with a baseline; set one, "
                             "or mode=single to grade the candidate's answers alone")
        problem = judge_budget_problem(self.judge, self.answer_sampling, self.judge_sampling,
                                       2 if self.mode == "pairwise" else 1)
        if problem:
            raise ValueError(problem)
        for role in ("candidate", "baseline"):
            problem = getattr(self, role) and context_problem(role, getattr(self, role), "answer_sampling",
                                                               self.answer_sampling)
            if problem:
                raise ValueError(problem)
        return self

    def roles(self) -> dict[str, GenerationConfig]:
        """Every model of the run by role (no baseline in single mode without one)."""
        return {role: gen for role in ("candidate", "baseline", "judge") if (gen := getattr(self, role)) is not None}

    def answering_roles(self) -> tuple[str, ...]:
        return ("candidate",) if self.baseline is None else ("candidate", "baseline")


# The judge's instructions around the answers, in tokens: an upper estimate of eval.judge's templates
# (about 150 words), so that the config check needs no tokenizer. eval.budget measures the real prompts.
JUDGE_TEMPLATE_TOKENS = 256


def judge_budget_problem(judge: GenerationConfig, answers: SamplingConfig, verdicts: SamplingConfig,
                         shown: int) -> str | None:
    """The judge's prompt must hold its instructions and `shown` whole answers at answer_sampling.max_tokens:
    hf and vllm keep only the last max_prompt_tokens tokens (the instructions and the question would go),
    and vLLM's max_model_len must hold that prompt plus the verdict."""
    if judge.backend not in TRUNCATING_BACKENDS:
        return None
    need = shown * answers.max_tokens + JUDGE_TEMPLATE_TOKENS
    if need > judge.max_prompt_tokens:
        return (f"judge.max_prompt_tokens: {judge.max_prompt_tokens} cannot hold the judge's instructions "
                f"(~{JUDGE_TEMPLATE_TOKENS} tokens) and {shown} answer(s) of answer_sampling.max_tokens="
                f"{answers.max_tokens}: set it to at least {need} or lower answer_sampling.max_tokens")
    return context_problem("judge", judge, "judge_sampling", verdicts)


def context_problem(role: str, gen: GenerationConfig, sampling_key: str, sampling: SamplingConfig) -> str | None:
    """A vLLM engine's max_model_len must hold its prompt budget plus what it writes."""
    limit = gen.vllm.max_model_len if gen.backend == "vllm" else None
    if limit is not None and gen.max_prompt_tokens + sampling.max_tokens > limit:
        return (f"{role}.vllm.max_model_len: {limit} cannot hold {role}.max_prompt_tokens={gen.max_prompt_tokens} "
                f"plus {sampling_key}.max_tokens={sampling.max_tokens}")
    return None
