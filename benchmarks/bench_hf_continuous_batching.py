"""Why the hf backend has its own continuous batching: transformers' continuous batching, one
left-padded generate(), and ours (generation/continuous.py), on the same prompts, model and sampling,
in one run, the bare model (no job).

    python benchmarks/bench_hf_continuous_batching.py [--prompts 8] [--max-tokens 64] [--threads 2]
        [--batch 8] [--dtype float32]

transformers' continuous batching (`model.generate_batch`, transformers 5: paged attention, a request
joins the batch as soon as a slot frees) is what would end a static batch's wait for its longest row.
Ours keeps transformers' DynamicCache and its attention (with `--dtype bfloat16`: the hf backend's
CPU kernel, generation/attention.py) and joins and drops rows between steps. Every side runs the same
prompts with at most `--batch` rows at once (static: in batches of `--batch`); each runs twice (all
sides, then all again) and the second run is reported, so that one-time set-up (the paged cache,
warm-up) is not counted. Prints tokens/s of each and the ratios.
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_generation_common import bundled_seed_rows
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from common.models import resolve_model
from generation.attention import register
from generation.continuous import Live, RunningBatch, row_rng
from generation.sampling import nucleus_sampler
from generation.types import SamplingParams


def prompts(tokenizer, count: int) -> list[list[int]]:
    rows = bundled_seed_rows(count)
    return [tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}],
                                          add_generation_prompt=True)["input_ids"] for row in rows]


def continuous(model, tokenizer, inputs, config, batch: int) -> tuple[int, float]:
    """transformers' scheduler sizes its own batches (paged cache): `batch` is not applied."""
    start = time.perf_counter()
    out = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    return sum(len(o.generated_tokens) for o in out.values()), time.perf_counter() - start


def static(model, tokenizer, inputs, config, batch: int) -> tuple[int, float]:
    """Batches of `batch` as the hf backend's static batching runs them: sampled by its nucleus sampler."""
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(inputs), batch):
        enc = tokenizer.pad({"input_ids": inputs[i:i + batch]}, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=config.max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, logits_processor=[nucleus_sampler(config.temperature, config.top_p)],
                                 pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        eos = config.eos_token_id
        tokens += sum(next((i + 1 for i, t in enumerate(row) if t == eos), len(row)) for row in new)
    return tokens, time.perf_counter() - start


def ours(model, tokenizer, inputs, config, batch: int) -> tuple[int, float]:
    """generation/continuous.py's running batch, fed as the hf backend feeds it: rows join between steps."""
    sampling = SamplingParams(config.temperature, config.top_p, config.max_new_tokens)
    running, waiting = RunningBatch(model, {config.eos_token_id}, config.pad_token_id, "cpu"), list(inputs)
    tokens, start = 0, time.perf_counter()
    while waiting or len(running):
        joining = [Live(i, waiting.pop(0), sampling, row_rng(sampling))
                   for i in range(min(batch - len(running), len(waiting)))]
        done = running.admit(joining) if joining else []
        if len(running):
            done += running.step()
        tokens += sum(len(row.tokens) + row.finished for row in done)  # the EOS counted, as the others count it
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="most rows at once, every side")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    inputs = prompts(tokenizer, args.prompts)
    config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=True, temperature=0.9, top_p=0.95,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    dtype = getattr(torch, args.dtype)
    kernel = register() if args.dtype == "bfloat16" else "sdpa"  # the hf backend's choice on this CPU
    sides = [("transformers continuous", continuous, None), ("static generate()", static, kernel),
             ("ours", ours, kernel)]
    results = {}
    for name, run, attention in sides * 2:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention).eval()
        results[name] = run(model, tokenizer, inputs, config, args.batch)
    for name, (tokens, seconds) in results.items():
        print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
    rate = {name: tokens / seconds for name, (tokens, seconds) in results.items()}
    print(f"transformers continuous / static: {rate['transformers continuous'] / rate['static generate()']:.2f}x; "
          f"ours / static: {rate['ours'] / rate['static generate()']:.2f}x "
          f"({args.prompts} prompts, at most {args.batch} at once, {args.max_tokens} new tokens, {args.threads} "
          f"threads, {args.dtype}, SmolLM2-135M)")


if __name__ == "__main__":
    main()
