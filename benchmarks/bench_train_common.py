"""Shared by the train benchmarks: evolved-like data and a bare single-process training loop."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVOLVED = "outputs/evolve-local/training/parquet"


def load_rows(path: str | None, n: int, seed: int = 0) -> tuple[list[dict], str]:
    """The evolve job's training rows if present (the real length distribution), else synthetic."""
    from train.fixtures import synthetic_rows

    path = path or EVOLVED
    if os.path.isdir(path):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        if rows:
            # Cycle the rows up to n (same length distribution, more steps), with unique ids.
            out = [dict(rows[i % len(rows)], id=f"{rows[i % len(rows)]['id']}-{i}") for i in range(n)]
            return out, f"evolved rows from {path} ({len(rows)} distinct, cycled to {n})"
    return synthetic_rows(n, seed), "synthetic evolve-like rows (lognormal response lengths; no evolve output found)"


def tokenize(rows: list[dict], model_dir: str, max_length: int, template: str = "wizardlm"):
    from transformers import AutoTokenizer

    from train.masking import hf_encoder, tokenize_rows

    enc = hf_encoder(AutoTokenizer.from_pretrained(model_dir))
    out = tokenize_rows(rows, template, enc, max_length, "truncate")
    keep = [i for i, s in enumerate(out["status"]) if s == "ok"]
    return [out["input_ids"][i] for i in keep], [out["labels"][i] for i in keep], enc.pad_id


def bare_train(model_dir: str, micro_batches: list[dict], accum: int, lr: float, warmup_steps: int,
               threads: int, skip_steps: int) -> dict:
    """Plain torch loop (no Ray, no DeepSpeed): AdamW + cosine, grad accumulation, clipping.

    micro_batches: dicts of int64 numpy arrays (model inputs) + "n_real". Times the optimizer
    steps after `skip_steps` (warm-up), like the Ray run's metric windows.
    """
    import torch
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    steps = len(micro_batches) // accum
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = get_cosine_schedule_with_warmup(optim, warmup_steps, steps)
    tokens = real = 0
    losses = []
    start = None
    for step in range(steps):
        if step == skip_steps:
            start, tokens, real = time.perf_counter(), 0, 0
        for batch in micro_batches[step * accum:(step + 1) * accum]:
            inputs = {k: torch.as_tensor(v) for k, v in batch.items() if k != "n_real"}
            loss = model(**inputs, use_cache=False).loss / accum
            loss.backward()
            losses.append(float(loss.detach()) * accum)
            tokens += inputs["input_ids"].numel()
            real += batch["n_real"]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "tokens_per_s": tokens / seconds, "real_tokens_per_s": real / seconds,
            "first_loss": losses[0], "last_loss": losses[-1]}
