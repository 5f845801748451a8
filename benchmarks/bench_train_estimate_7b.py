"""Benchmark 3: a documented estimate for LLaMA-7B on 8 x A100 / H100 with configs/train_cloud_7b.yaml.

Measured here (CPU): the evolved length distribution under the paper's template (tokens per
sample) and how full packed rows of 2048 are (first-fit-decreasing on that distribution);
the Ray+DeepSpeed / bare-loop throughput ratio comes from bench_train_ray_vs_bare.py
(--ray-ratio, capped at 1: Ray cannot make a GPU faster). Published: dense bf16 peaks (A100
312 TFLOP/s, H100 SXM 989 TFLOP/s), LLaMA-7B shape (6.74e9 parameters, 32 layers, hidden
4096), the paper's data size (~250K evolved instructions) and recipe (3 epochs, global batch
64, max length 2048). MFU is an assumption (--mfu, default 0.40 = the target; full
fine-tunes of 7B with ZeRO-3/FSDP, flash attention and activation checkpointing are
published at 40-55% on A100/H100). FLOPs/token: 6N + 12 L H S (PaLM appendix B).

    .venv/bin/python benchmarks/bench_train_estimate_7b.py [--mfu 0.40] [--ray-ratio 1.0]
Ratio printed last: estimated A100 tokens/s/GPU / 260 (Ray's DeepSpeed fine-tuning template on A10G).
"""
from __future__ import annotations

import argparse

from bench_train_common import load_rows, tokenize

LLAMA_7B = {"params": 6.74e9, "layers": 32, "hidden": 4096}
PAPER = {"samples": 250_000, "epochs": 3, "global_batch": 64, "max_length": 2048}
A10G_TEMPLATE_TOKENS_PER_S = 260.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mfu", type=float, default=0.40)
    parser.add_argument("--ray-ratio", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    from common.models import SMALL_MODEL_ALIAS, resolve_model
    from train.metrics import PEAK_TFLOPS_BF16, flops_per_token
    from train.packing import pack

    rows, source = load_rows(args.data, args.rows)
    ids, labels, pad = tokenize(rows, resolve_model(SMALL_MODEL_ALIAS), PAPER["max_length"])
    packed = pack(ids, labels, PAPER["max_length"], pad)
    mean_tokens = sum(len(x) for x in ids) / len(ids)
    fill = sum(packed["n_real"]) / (len(packed["n_real"]) * PAPER["max_length"])
    flops = flops_per_token(LLAMA_7B["params"], LLAMA_7B["layers"], LLAMA_7B["hidden"], PAPER["max_length"])
    print(f"measured: {source}: {mean_tokens:.0f} tokens/sample (wizardlm template); packed rows of 2048 are "
          f"{fill:.1%} full")
    print(f"LLaMA-7B FLOPs/token = 6N + 12LHS = {flops:.3g}; assumed MFU {args.mfu:.0%}; Ray overhead factor "
          f"{min(args.ray_ratio, 1.0):.2f}")
    a100 = None
    for gpu in ("A100", "H100 SXM"):
        real_per_gpu = PEAK_TFLOPS_BF16[gpu] * 1e12 * args.mfu / flops * min(args.ray_ratio, 1.0)
        a100 = a100 or real_per_gpu
        for label, tokens_per_sample in (("local evolved lengths", mean_tokens), ("ChatGPT-length answers", 600.0)):
            tokens = PAPER["samples"] * tokens_per_sample * PAPER["epochs"]
            hours = tokens / (real_per_gpu * 8) / 3600
            steps = PAPER["samples"] / PAPER["global_batch"]  # optim.batch_unit=samples, as in the cloud preset
            print(f"{gpu} x8: {real_per_gpu:,.0f} useful tokens/s/GPU; {label} ({tokens_per_sample:.0f} tok/sample): "
                  f"{tokens / 1e9:.2f}B tokens over 3 epochs, ~{steps * PAPER['epochs']:,.0f} optimizer steps, "
                  f"~{hours:.1f} h wall")
    print(f"ratio estimated A100 tokens/s/GPU / A10G Ray DeepSpeed template (260): {a100 / A10G_TEMPLATE_TOKENS_PER_S:.1f}x")


if __name__ == "__main__":
    main()
