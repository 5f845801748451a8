"""Benchmark 3: steps, GPU-hours and cost of the cloud presets (LLaMA-7B, 8 x A100 / H100), an estimate.

Every number comes from train/estimate.py (the function the job's plan and the docs use) applied to
configs/train_cloud_7b.yaml (full fine-tune) and configs/train_cloud_7b_lora.yaml (LoRA): the paper's
70K samples (data.max_samples of the ~250K evolved), 3 epochs, global batch 64, 2048 tokens, sdpa,
gradient checkpointing. Measured here (CPU): the evolved length distribution under the paper's
template (tokens per sample) and how full packed rows of 2048 are. Assumed: the GPU utilisation per
attention implementation (train/estimate.py says why: sdpa 30%, flash-attention 2 40%), ~600 tokens
per sample for WizardLM's ChatGPT-length answers (the WizardLM_evol_instruct_V2 card's mean: 589), the
Ray overhead factor (--ray-ratio, from bench_train_ray_vs_bare.py, capped at 1). Published: dense
bf16 peaks (A100 312 TFLOP/s, H100 SXM 989), LLaMA-7B's shape, p4d.24xlarge at $32.77/h.

    .venv/bin/python benchmarks/bench_train_estimate_7b.py [--ray-ratio 1.0] [--tokens-per-sample 600]
Ratio printed last: estimated A100 useful tokens/s/GPU of the full preset / 260 (Ray's DeepSpeed
fine-tuning template on A10G).
"""
from __future__ import annotations

import argparse

from bench_train_common import load_rows, tokenize

EVOLVED_SAMPLES = 250_000  # the paper's evolved set, before data.max_samples
A10G_TEMPLATE_TOKENS_PER_S = 260.0
PRESETS = {"full": "configs/train_cloud_7b.yaml", "lora": "configs/train_cloud_7b_lora.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ray-ratio", type=float, default=1.0)
    parser.add_argument("--tokens-per-sample", type=float, default=600.0)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    from common.config import load_config
    from common.models import SMALL_MODEL_ALIAS, resolve_model
    from train.config import TrainConfig
    from train.estimate import UTILISATION_BY_ATTENTION, estimate_config
    from train.packing import pack

    rows, source = load_rows(args.data, args.rows)
    ids, labels, pad = tokenize(rows, resolve_model(SMALL_MODEL_ALIAS), 2048)
    packed = pack(ids, labels, 2048, pad)
    local_tokens = sum(len(x) for x in ids) / len(ids)
    fill = sum(packed["n_real"]) / (len(packed["n_real"]) * 2048)
    print(f"measured: {source}: {local_tokens:.0f} tokens/sample (wizardlm template); packed rows of 2048 are "
          f"{fill:.1%} full")
    print(f"assumed GPU utilisation per attention implementation: {UTILISATION_BY_ATTENTION}; Ray overhead "
          f"factor {min(args.ray_ratio, 1.0):.2f}")
    ratio = min(args.ray_ratio, 1.0)
    full_a100 = None
    for variant, path in PRESETS.items():
        cfg = load_config(TrainConfig, path)
        for gpu in ("A100", "H100 SXM"):
            for label, tokens in (("ChatGPT-length answers", args.tokens_per_sample), ("local lengths", local_tokens)):
                e = estimate_config(cfg, EVOLVED_SAMPLES, tokens, gpu)
                hours, cost = e.gpu_hours / ratio, None if e.cost is None else e.cost / ratio
                per_gpu = e.tokens / (hours * 3600)
                if variant == "full" and gpu == "A100" and tokens == args.tokens_per_sample:
                    full_a100 = per_gpu
                print(f"{variant} ({path}) {gpu} x{cfg.scaling.num_workers}, {label} ({tokens:.0f} tok/sample): "
                      f"{e.samples:,} samples, {e.steps_per_epoch:,} steps/epoch, {e.total_steps:,} steps, "
                      f"{e.tokens / 1e6:.0f}M tokens, {per_gpu:,.0f} tokens/s/GPU, {hours:.1f} GPU-h, "
                      f"{hours / cfg.scaling.num_workers:.2f} h wall, cost "
                      f"{'n/a' if cost is None else f'${cost:,.0f}'}")
    print(f"ratio estimated A100 tokens/s/GPU (full preset) / A10G Ray DeepSpeed template (260): "
          f"{full_a100 / A10G_TEMPLATE_TOKENS_PER_S:.1f}x")


if __name__ == "__main__":
    main()
