"""Why the hf backend batches statically: transformers' own continuous batching vs one left-padded
generate(), on the same prompts, model and sampling, in one run.

    python benchmarks/bench_hf_continuous_batching.py [--prompts 8] [--max-tokens 64] [--threads 2]

Continuous batching (`model.generate_batch`, transformers 5: paged attention, a request joins the
batch as soon as a slot frees) is what would end a static batch's wait for its longest row. Each side
runs twice (continuous, static, continuous, static) and the second run of each is reported, so that
one-time set-up (the paged cache, warm-up) is not counted. Prints tokens/s of each and the ratio.
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_generation_common import bundled_seed_rows
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from common.models import resolve_model


def prompts(tokenizer, count: int) -> list[list[int]]:
    rows = bundled_seed_rows(count)
    return [tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}],
                                          add_generation_prompt=True)["input_ids"] for row in rows]


def continuous(model, tokenizer, inputs, config) -> tuple[int, float]:
    start = time.perf_counter()
    out = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    return sum(len(o.generated_tokens) for o in out.values()), time.perf_counter() - start


def static(model, tokenizer, inputs, config) -> tuple[int, float]:
    enc = tokenizer.pad({"input_ids": inputs}, padding=True, return_tensors="pt")
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, generation_config=config)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    eos = config.eos_token_id
    tokens = sum(next((i + 1 for i, t in enumerate(row) if t == eos), len(row)) for row in new)
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    inputs = prompts(tokenizer, args.prompts)
    config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=True, temperature=0.9, top_p=0.95,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    results = {}
    for name, run in [("continuous", continuous), ("static", static)] * 2:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # each side its own attention
        results[name] = run(model, tokenizer, inputs, config)
    for name, (tokens, seconds) in results.items():
        print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
    (ct, cs), (st, ss) = results["continuous"], results["static"]
    print(f"continuous/static tokens/s: {(ct / cs) / (st / ss):.2f}x "
          f"({args.prompts} prompts, {args.max_tokens} new tokens, {args.threads} threads, fp32, SmolLM2-135M)")


if __name__ == "__main__":
    main()
