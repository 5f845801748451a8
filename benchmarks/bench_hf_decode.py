"""The hf backend's decode, step by step: SDPA + transformers' top-p sampling (the backend before),
grouped_decode attention (generation/attention.py), then also our sampler (generation/sampling.py).

    python benchmarks/bench_hf_decode.py [--dtype bfloat16] [--batch 8 16] [--tokens 128] [--job-seeds 16]
                                         [--job-batches 8 32]

1. The bare model: left-padded batches of the job's real rewrite prompts (bundled seeds, the chat
   template), `generate()` at T=1/top_p 0.95 for exactly `--tokens` new tokens, per setting and batch
   size: prefill seconds, decode ms per step, tokens/s. The same work in every setting.
2. With `--job-seeds N` (0: skip): the evolve job through Ray (`configs/local.yaml`, as
   bench_engine_saturation.py's job side runs it), with `generation.attn_implementation=sdpa`, then
   `auto` (grouped_decode on CPU): generated tokens over the actor's chain seconds. Sampled texts
   differ between the runs, so this part is noisier than part 1.
3. With `--job-seeds N`: the same job with `auto` at each of `--job-batches` (`batch_size`, with
   `max_chains` 4 x batch_size as in `configs/local.yaml`): tokens/s and the ratio to the first.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from bench_engine_saturation import run_job
from bench_generation_common import bundled_seed_rows

from common.models import SMALL_MODEL_ALIAS, resolve_model
from evol.operations import OPERATIONS
from evol.templates import evolve_prompt
from generation.hf import attention_kernel
from generation.prompts import prompt_token_ids
from generation.sampling import nucleus_sampler

SETTINGS = {"sdpa + transformers sampling": ("sdpa", False), "grouped_decode + transformers sampling": ("auto", False),
            "grouped_decode + our sampler": ("auto", True)}


def bare(name: str, dtype: str, batches: list[int], tokens: int, threads: int) -> dict[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    path = resolve_model(SMALL_MODEL_ALIAS)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    kernel, ours = SETTINGS[name]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                 attn_implementation=attention_kernel(kernel, cuda=False)).eval()
    rng = random.Random(0)
    seeds = bundled_seed_rows(max(batches))
    prompts = [prompt_token_ids(evolve_prompt(rng.choice(OPERATIONS), row["instruction"]), "chat", tokenizer)
               for row in seeds]
    rates = {}
    for batch in batches:
        enc = tokenizer.pad({"input_ids": prompts[:batch]}, return_tensors="pt")
        args = dict(do_sample=False, logits_processor=[nucleus_sampler(1.0, 0.95)]) if ours else dict(
            do_sample=True, temperature=1.0, top_p=0.95)
        args.update(top_k=None, pad_token_id=tokenizer.pad_token_id)
        with torch.inference_mode():
            torch.manual_seed(0)
            model.generate(**enc, max_new_tokens=2, **args)  # warm-up
            start = time.perf_counter()
            model.generate(**enc, max_new_tokens=1, **args)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, **args)
            total = time.perf_counter() - start
        rates[batch] = batch * tokens / total
        print(f"{name}, {dtype}, batch {batch:>2} ({enc['input_ids'].shape[1]} prompt tokens, padded): prefill "
              f"{prefill:.2f} s, decode {1000 * (total - prefill) / (tokens - 1):.0f} ms/step, {rates[batch]:.1f} tok/s",
              flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--job-seeds", type=int, default=16, help="0: the bare model only")
    parser.add_argument("--job-tokens", type=int, default=256)
    parser.add_argument("--job-batches", type=int, nargs="+", default=[8, 32], help="batch sizes for part 3")
    args = parser.parse_args()
    rates = {name: bare(name, args.dtype, args.batch, args.tokens, args.threads) for name in SETTINGS}
    before = rates["sdpa + transformers sampling"]
    for batch in args.batch:
        print(f"bare model, batch {batch}: " + ", ".join(
            f"{name} {rates[name][batch] / before[batch]:.2f}x" for name in list(SETTINGS)[1:]) + " the tokens/s before")
    if not args.job_seeds:
        return
    job = argparse.Namespace(seeds=args.job_seeds, rounds=2, evolve_tokens=args.job_tokens,
                             respond_tokens=args.job_tokens, threads=args.threads, prefix_caching="default")
    dtype = f"generation.dtype={args.dtype}"
    with tempfile.TemporaryDirectory() as tmp:
        kernels = {kernel: job_rate(job, [dtype, f"generation.attn_implementation={kernel}"], Path(tmp) / kernel,
                                    f"attn_implementation={kernel}")
                   for kernel in ("sdpa", "auto")}  # both with our sampler: it has no setting
        batches = {batch: job_rate(job, [dtype, f"generation.batch_size={batch}", f"generation.max_chains={4 * batch}"],
                                   Path(tmp) / f"batch-{batch}", f"batch_size={batch}")
                   for batch in args.job_batches}
    print(f"job ({args.job_seeds} seeds x 2 rounds): grouped_decode/sdpa = {kernels['auto'] / kernels['sdpa']:.2f}x tokens/s")
    first = args.job_batches[0]
    for batch in args.job_batches[1:]:
        print(f"job ({args.job_seeds} seeds x 2 rounds): batch_size {batch}/{first} = "
              f"{batches[batch] / batches[first]:.2f}x tokens/s")


def job_rate(job, overrides: list[str], out: Path, label: str) -> float:
    """The job through Ray with these overrides: generated tokens over the actor's chain seconds."""
    job.override = overrides
    summary, _, wall = run_job("hf", job, out)
    [gauges] = summary["actors"].values()
    rate = summary["generated_tokens"] / gauges["chain_seconds"]
    print(f"job, {label}: {summary['requests']} requests, {summary['generated_tokens']} tokens in "
          f"{gauges['chain_seconds']:.1f} s of chains = {rate:.1f} tok/s (wall {wall:.1f} s, "
          f"{gauges['mean_batch_rows']:.2f} rows per batch)", flush=True)
    return rate


if __name__ == "__main__":
    main()
