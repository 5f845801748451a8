"""Benchmark 1: the train job (Ray Train V2 + DeepSpeed, 2 CPU workers) vs a bare single-process loop.

Same tiny Llama, same packed data, same global batch and optimizer steps, same 2 cores
(Ray: 2 workers x 1 thread; bare: 1 process x 2 threads). Steady-state tokens/s excludes the
first metric window (warm-up) in both; the Ray side also prints its end-to-end wall time.

    .venv/bin/python benchmarks/bench_train_ray_vs_bare.py [--stage 3] [--rows 160]
Ratio printed last: Ray+DeepSpeed tokens/s / bare tokens/s (target >= 0.9).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_train_common import bare_train, load_rows, tokenize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/evolray/torch_extensions"))
    import numpy as np
    import ray

    from common.config import load_config
    from train.config import TrainConfig
    from train.fixtures import make_tiny_model, write_evolved_parquet
    from train.packing import pack
    from train.run import run_train

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model_dir = make_tiny_model(work / "model", layers=4, hidden=128)
    rows, source = load_rows(args.data, args.rows)
    write_evolved_parquet(work / "data", rows)
    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", [
        f"model.name={model_dir}", f"data.path={work / 'data'}", f"data.max_length={args.max_length}",
        "data.heldout_fraction=0", "optim.epochs=1", "optim.batch_unit=sequences", "optim.global_batch_size=4",
        "optim.micro_batch_size=1", f"deepspeed.stage={args.stage}",
        f"checkpoint.storage_path={work / 'runs'}", "checkpoint.every_steps=100000", f"output.path={work / 'out'}",
        f"metrics.log_every_steps={args.log_every}", "sample.generate=false"])
    # Bare loop: the same packed sequences (packed the same way, one group), the same step count.
    # It runs before and after the Ray run and the faster of the two counts (a shared machine's load
    # varies; the choice only favours the baseline).
    ids, labels, pad = tokenize(rows, model_dir, args.max_length)
    packed = pack(ids, labels, args.max_length, pad)
    steps = (len(packed["input_ids"]) // 4) * cfg.optim.epochs
    micro = [{"input_ids": np.array([packed["input_ids"][i]]), "labels": np.array([packed["labels"][i]]),
              "position_ids": np.array([packed["position_ids"][i]]), "n_real": packed["n_real"][i]}
             for i in range(steps * 4)]

    def run_bare():
        return bare_train(model_dir, micro, accum=4, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                          threads=2, skip_steps=args.log_every)

    bare_runs = [run_bare()]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    summary = run_train(cfg)
    ray_wall = time.perf_counter() - started
    ray.shutdown()
    bare_runs.append(run_bare())
    bare = max(bare_runs, key=lambda r: r["tokens_per_s"])
    windows = summary["history"][1:]
    ray_tok_s = sum(w["tokens_per_s"] * w["window_s"] for w in windows) / sum(w["window_s"] for w in windows)
    print(f"data: {source}; {len(rows)} rows -> {summary['data']['units']} packed sequences of {args.max_length}")
    print(f"ray+deepspeed ZeRO-{args.stage} (2 workers x 1 CPU): {steps} steps, steady {ray_tok_s:.0f} tokens/s, "
          f"end-to-end {ray_wall:.0f} s (data prep + worker start + train + export); "
          f"loss {summary['first_logged_loss']:.3f} -> {summary['last_logged_loss']:.3f}")
    print(f"bare torch loop (1 process x 2 threads): {bare['steps']} steps, steady {bare['tokens_per_s']:.0f} tokens/s "
          f"({bare['seconds']:.1f} s timed; before/after Ray: "
          f"{bare_runs[0]['tokens_per_s']:.0f} / {bare_runs[1]['tokens_per_s']:.0f}); loss {bare['first_loss']:.3f} -> {bare['last_loss']:.3f}")
    print(f"ratio ray+deepspeed / bare tokens/s: {ray_tok_s / bare['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
