"""Steps, GPU-hours and cost of a training run: the one place that computes them (pure).

The job's plan (`train.run.make_plan`), the 7B benchmark and the documentation's tables all use
these functions, so that their numbers agree.

GPU-hours = trained tokens x FLOPs per token (model FLOPs, `train.metrics.flops_per_token`, plus
one more forward pass when gradient checkpointing recomputes the activations) / (the GPU's dense
bf16 peak x the utilisation assumed for the attention implementation). The utilisation counts
every FLOP the GPU does, recomputation included; the MFU the job logs counts model FLOPs only,
so with gradient checkpointing it reads 3/4 of this (2/3 with LoRA).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from train.metrics import PEAK_TFLOPS_BF16, flops_per_token

# Assumed share of the GPU's dense bf16 peak a 7B ZeRO-3 run on one 8-GPU node reaches, per
# attention implementation. Assumptions, not measurements (no 7B GPU run was made): published
# full fine-tunes of 7B with flash-attention 2, ZeRO-3/FSDP and activation checkpointing report
# 40-55% on A100/H100; we take the low end. sdpa here gets a materialised block-diagonal mask (the
# samples joined into one row), so PyTorch cannot use its flash kernel: the memory-efficient or the
# math kernel computes the whole row's score matrix, masked (with 4 samples of ~600 tokens, 4x the
# attention work a per-sample kernel does) and reads the mask: assumed 30%. eager materialises
# every score matrix in the model's dtype: assumed 20%.
UTILISATION_BY_ATTENTION = {"flash_attention_2": 0.40, "sdpa": 0.30, "eager": 0.20}

LLAMA_7B = {"params": 6.74e9, "layers": 32, "hidden": 4096}  # LLaMA-7B's shape (Touvron et al. 2023)
# AWS p4d.24xlarge (8 x A100 40 GB, cluster.yaml's gpu_training node) on-demand: $32.77/h.
PRICE_PER_GPU_HOUR = {"A100": 32.77 / 8}


def steps_per_epoch(units: int, global_batch: int) -> int:
    """Optimizer steps of one epoch: whole global batches only (the few units left over, fewer than
    one batch, are not trained that epoch: every worker then does the same number of steps)."""
    return units // global_batch


@dataclass(frozen=True)
class Estimate:
    samples: int
    steps_per_epoch: int
    total_steps: int
    tokens: float  # trained tokens, all epochs
    flops: float  # done by the GPUs (recomputation included)
    utilisation: float
    gpu_hours: float
    wall_hours: float
    cost: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(samples: int, tokens_per_sample: float, *, epochs: int, global_batch: int, seq_len: int,
             attn_implementation: str, gradient_checkpointing: bool, lora: bool, gpu: str, gpus: int,
             model: dict = LLAMA_7B, utilisation: float | None = None,
             price_per_gpu_hour: float | None = None) -> Estimate:
    """The run's steps, GPU-hours, wall-clock hours on `gpus` GPUs and cost (None without a price).
    Only whole global batches are trained (`steps_per_epoch`), so the tokens are those of the
    samples of the trained steps."""
    steps = steps_per_epoch(samples, global_batch)
    tokens = steps * global_batch * tokens_per_sample * epochs
    per_token = flops_per_token(model["params"], model["layers"], model["hidden"], seq_len, lora=lora)
    if gradient_checkpointing:
        per_token += flops_per_token(model["params"], model["layers"], model["hidden"], seq_len) / 3  # a forward
    used = utilisation if utilisation is not None else UTILISATION_BY_ATTENTION[attn_implementation]
    gpu_hours = tokens * per_token / (PEAK_TFLOPS_BF16[gpu] * 1e12 * used) / 3600
    price = price_per_gpu_hour if price_per_gpu_hour is not None else PRICE_PER_GPU_HOUR.get(gpu)
    return Estimate(samples=samples, steps_per_epoch=steps, total_steps=steps * epochs, tokens=tokens,
                    flops=tokens * per_token, utilisation=used, gpu_hours=gpu_hours, wall_hours=gpu_hours / gpus,
                    cost=None if price is None else gpu_hours * price)


def estimate_config(cfg, samples: int, tokens_per_sample: float, gpu: str, **kwargs) -> Estimate:
    """`estimate` for a TrainConfig (a preset): its epochs, batch, length, attention, recomputation,
    LoRA and workers; `data.max_samples` caps the samples as the job does."""
    if cfg.data.max_samples is not None:
        samples = min(samples, cfg.data.max_samples)
    return estimate(samples, tokens_per_sample, epochs=cfg.optim.epochs, global_batch=cfg.optim.global_batch_size,
                    seq_len=cfg.data.max_length, attn_implementation=cfg.model.attn_implementation,
                    gradient_checkpointing=cfg.model.gradient_checkpointing, lora=cfg.lora.method != "none",
                    gpu=gpu, gpus=cfg.scaling.num_workers, **kwargs)
