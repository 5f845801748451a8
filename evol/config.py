"""EvolveConfig: everything the evolve job reads, validated before Ray or a model starts."""
from __future__ import annotations

from pydantic import Field, field_validator

from common.config import StrictModel
from common.ray_setup import RayConfig
from evol.operations import OPERATIONS
from generation.config import GenerationConfig, SamplingConfig

BUNDLED_PREFIX = "bundled:"


class SeedsConfig(StrictModel):
    path: str = Field(f"{BUNDLED_PREFIX}self_instruct_seeds.jsonl",
                      description="file or folder (jsonl/json/parquet), local or s3://; bundled:NAME for package data")
    instruction_field: str = "instruction"
    input_field: str | None = Field("input", description="optional Alpaca-style context appended to the instruction")
    response_field: str | None = Field("output", description="optional human answer; generated when absent")
    id_field: str | None = Field("id", description="optional stable id; default FILE:LINE")
    limit: int | None = Field(None, ge=1, description="use only the first N rows read")
    max_instruction_tokens: int = Field(1024, ge=1, description="longer seeds are quarantined")
    dedupe_partitions: int = Field(8, ge=1, description="partitions of the duplicate-id shuffle")


class EvolveSettings(StrictModel):
    rounds: int = Field(4, ge=1, le=20, description="M in the paper")
    seed: int = Field(0, description="seeds the per-row operation choice")
    operations: tuple[str, ...] = Field(OPERATIONS, description="subset of the six operations to draw from")
    evolve_sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=256)
    respond_sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=512)
    judge_sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=8)

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
    path: str = Field("outputs/evolve-local", description="local folder or s3://bucket/prefix")
    overwrite: bool = Field(False, description="replace an existing non-empty output folder")


class EvolveConfig(StrictModel):
    seeds: SeedsConfig = SeedsConfig()
    evolve: EvolveSettings = EvolveSettings()
    generation: GenerationConfig = GenerationConfig()
    judge: GenerationConfig | None = Field(
        None, description="the equality check's own model/backend (the paper used ChatGPT); None: `generation`")
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()
