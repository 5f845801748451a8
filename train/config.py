"""TrainConfig: the one config of the train job (YAML + dotted CLI overrides, validated up front)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from common.config import PathText, StrictModel
from common.ray_setup import RayConfig


class DataSection(StrictModel):
    path: PathText = Field("outputs/evolve-local/training/parquet",
                      description="evolve job's training parquet folder (local or s3://)")
    template: Literal["wizardlm", "vicuna_v1.1", "chat_template"] = Field(
        "wizardlm", description="prompt format: paper's 7B '### Response:', Vicuna v1.1, or the tokenizer's")
    max_length: int = Field(2048, ge=16, description="tokens per (packed) training sequence")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="over-long samples: keep the first max_length tokens, or drop them")
    packing: bool = Field(True, description=(
        "no padding between samples: batch_unit=samples concatenates each micro batch's samples into one row; "
        "batch_unit=sequences packs samples into rows of max_length. Position ids restart per sample, so "
        "samples never attend to each other. false: pad each micro batch to its longest sample"))
    pack_group_rows: int = Field(2048, ge=1, description="batch_unit=sequences: samples packed together per group")
    heldout_fraction: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "fraction of lineages (root_id: a seed with all its evolutions) kept out of training"))
    heldout_max_rows: int = Field(256, ge=0, description=(
        "held-out rows evaluated (loss before/after, one sample); the rest stay out of training, unevaluated"))
    seed: int = Field(0, description="held-out split, packing groups, row order per epoch, max_samples' sample")
    max_samples: Optional[int] = Field(None, ge=1, description=(
        "train on at most this many samples: a uniform seeded sample of the usable training rows (by a hash "
        "of row id and data.seed; the paper sampled 70K of its 250K evolved instructions); none = all"))


class ModelSection(StrictModel):
    name: PathText = Field("smollm2-135m-instruct", description="alias, local folder, s3:// folder or hub id")
    gradient_checkpointing: bool = Field(False, description="recompute activations (long sequences, 7B)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="flash_attention_2 gets each micro batch as one row (varlen attention per sample)")


class LoraSection(StrictModel):
    method: Literal["none", "lora", "qlora"] = Field("none", description=(
        "none: full fine-tune; lora: peft LoRA adapters on a frozen base; qlora: LoRA on a 4-bit (NF4) base "
        "(bitsandbytes, GPU only)"))
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="adapter scale = alpha / r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter's input (seeded per step)")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), min_length=1,
        description="names of the linear layers that get adapters (LLaMA's attention and MLP projections)")
    export: Literal["merged", "adapter"] = Field("merged", description=(
        "merged: base + adapters folded into one HF model (what evaluate and vLLM load); adapter: the peft "
        "adapter alone (adapter_model.safetensors + adapter_config.json)"))


class OptimSection(StrictModel):
    epochs: int = Field(3, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(2, ge=0, description="linear warm-up optimizer steps, then cosine decay")
    batch_unit: Literal["samples", "sequences"] = Field("samples", description=(
        "what global_batch_size and micro_batch_size count: samples (the paper's: 64 samples per optimizer "
        "step) or sequences (packed rows of data.max_length tokens, several samples each)"))
    global_batch_size: int = Field(64, ge=1, description="batch_unit per optimizer step, all workers")
    micro_batch_size: int = Field(1, ge=1, description="batch_unit per worker per forward pass")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 = off)")


class DeepSpeedSection(StrictModel):
    stage: Literal[0, 1, 2, 3] = Field(3, description="ZeRO stage")
    precision: Literal["bf16", "fp32"] = Field("fp32", description="bf16 on GPU; fp32 on CPU")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload of optimizer states to CPU")
    offload_params: bool = Field(False, description="ZeRO-3 parameter offload to CPU")


class ScalingSection(StrictModel):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = Field(False, description="each worker reserves one GPU")
    cpus_per_worker: float = Field(1, gt=0)
    device: Literal["auto", "cpu"] = Field("auto", description=(
        "auto: workers compute on their GPU when use_gpu; cpu: they reserve one (use_gpu) but compute on CPU, "
        "for a rehearsal on Ray's fake multi-node cluster, whose GPUs are only resource counts"))
    accelerator_type: Optional[str] = Field(None, description=(
        "workers only on nodes with Ray's accelerator_type:NAME resource (e.g. A100, declared per node type in "
        "cluster.yaml): keeps them off the generation nodes; None: any node with the resources"))

    @property
    def cuda(self) -> bool:
        """The workers compute on CUDA (nccl, fused optimizers, pinned memory)."""
        return self.use_gpu and self.device == "auto"


class CheckpointSection(StrictModel):
    storage_path: PathText = Field("outputs/train-runs", description="RunConfig storage (local or s3://)")
    every_steps: int = Field(50, ge=1, description="checkpoint every N optimizer steps (and at the end)")
    keep: int = Field(2, ge=1, description="checkpoints kept (the latest K)")
    max_failures: int = Field(3, ge=0, description="worker-group restarts from the last checkpoint")
    scratch_dir: Optional[str] = Field(None, description=(
        "local folder where each worker downloads the model (s3:// or hub id), stages its checkpoint shards and "
        "the export before upload, and downloads a checkpoint from s3:// to resume (NVMe on GPU nodes; created "
        "if missing); default: the system temp folder (the model: the evolray cache)"))
    upload: Literal["async", "sync"] = Field("async", description=(
        "async: training goes on while Ray Train uploads a saved checkpoint (CheckpointUploadMode.ASYNC); "
        "sync: it waits for the upload"))


class OutputSection(StrictModel):
    path: PathText = Field("outputs/train-local/model", description="final HF model folder (local or s3://)")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="dtype of the saved weights")


class MetricsSection(StrictModel):
    log_every_steps: int = Field(5, ge=1, description="print + ray.train.report every N optimizer steps")
    peak_tflops_per_worker: Optional[float] = Field(
        None, gt=0, description="MFU denominator; default: GPU datasheet, or measured CPU matmul peak")
    heldout_every_steps: int = Field(0, ge=0, description=(
        "held-out loss every N optimizer steps (and before/after training); 0: only before and after"))
    tensorboard: bool = Field(True, description="write the logged metrics as TensorBoard events (on the driver)")
    tensorboard_dir: Optional[str] = Field(None, description=(
        "folder of the TensorBoard events (local or s3://); default: checkpoint.storage_path/<name>/tensorboard"))


class SampleSection(StrictModel):
    generate: bool = Field(True, description="answer one held-out instruction with the exported model")
    max_new_tokens: int = Field(64, ge=1)


class DebugSection(StrictModel):
    kill_worker_rank: int = Field(1, ge=0)
    kill_at_step: Optional[int] = Field(
        None, ge=1, description="SIGKILL that worker at this step of the first attempt (fault-tolerance test)")


class TrainConfig(StrictModel):
    name: str = Field("train-local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="run name: rerunning the same name resumes from its last checkpoint")
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    optim: OptimSection = OptimSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    scaling: ScalingSection = ScalingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    output: OutputSection = OutputSection()
    metrics: MetricsSection = MetricsSection()
    sample: SampleSection = SampleSection()
    debug: DebugSection = DebugSection()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        per_step = self.optim.micro_batch_size * self.scaling.num_workers
        if self.optim.global_batch_size % per_step:
            raise ValueError(f"optim.global_batch_size ({self.optim.global_batch_size}) must be a multiple of "
                             f"optim.micro_batch_size x scaling.num_workers ({per_step})")
        if self.deepspeed.offload_params and self.deepspeed.stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.stage=3")
        if self.optim.batch_unit == "sequences" and not self.data.packing:
            raise ValueError("optim.batch_unit=sequences counts packed rows: it needs data.packing=true "
                             "(or use optim.batch_unit=samples)")
        if self.model.attn_implementation == "flash_attention_2" and not self.scaling.cuda:
            raise ValueError("model.attn_implementation=flash_attention_2 needs scaling.use_gpu=true "
                             "(and scaling.device=auto)")
        if self.deepspeed.precision == "bf16" and not self.scaling.cuda:
            raise ValueError("deepspeed.precision=bf16 needs scaling.use_gpu=true (and scaling.device=auto; "
                             "use fp32 on CPU)")
        if self.model.attn_implementation == "flash_attention_2" and self.deepspeed.precision != "bf16":
            raise ValueError("model.attn_implementation=flash_attention_2 runs in bf16/fp16 only: set "
                             "deepspeed.precision=bf16 (or use sdpa)")
        self._check_qlora()
        if self.debug.kill_at_step is not None and self.debug.kill_worker_rank >= self.scaling.num_workers:
            raise ValueError("debug.kill_worker_rank must be < scaling.num_workers")
        return self

    def _check_qlora(self) -> None:
        if self.lora.method != "qlora":
            return
        if not self.scaling.use_gpu:
            raise ValueError("lora.method=qlora needs scaling.use_gpu=true (bitsandbytes' 4-bit kernels are CUDA "
                             "only); use lora.method=lora on CPU")
        if self.deepspeed.stage == 3 or self.deepspeed.offload_params:
            raise ValueError("lora.method=qlora keeps the 4-bit base whole on every GPU: use deepspeed.stage 0-2 "
                             "without offload_params")
        if self.deepspeed.precision != "bf16":
            raise ValueError("lora.method=qlora computes in bf16: set deepspeed.precision=bf16")

    @property
    def grad_accum_steps(self) -> int:
        return self.optim.global_batch_size // (self.optim.micro_batch_size * self.scaling.num_workers)


# What may change between a run and its resume: where things go, how often they are saved or logged,
# and what does not change the weights (the micro batch: the same units and per-token mean per step;
# gradient checkpointing; the attention kernel; workers' CPUs: lowering memory after an OOM must not
# block a resume). The data's content, the steps and the world size are compared through the plan.
RESUME_FREE = ("name", "data.path", "data.heldout_max_rows", "model.gradient_checkpointing",
               "model.attn_implementation", "optim.micro_batch_size", "scaling", "checkpoint", "output",
               "lora.export", "metrics", "sample", "debug", "ray")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_settings(cfg: TrainConfig) -> dict:
    """Every setting that changes the trained weights, flat (`optim.lr`: 2e-05): a checkpoint of other
    settings is never resumed (it would 'finish' a run of the old settings under the new ones)."""
    return {key: value for key, value in _flat(cfg.model_dump(mode="json")).items()
            if not any(key == free or key.startswith(free + ".") for free in RESUME_FREE)}
