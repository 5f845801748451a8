"""The hf backend's top-p sampler on real logits: a nucleus wider than the first candidates sorted in
full (the sampler before) vs looked for among `WIDER` times as many first (generation/sampling.py).

    python benchmarks/bench_hf_sampling.py [--prompts 16] [--steps 96] [--rows 16 32] [--repeats 5]

The small model decodes the job's real rewrite prompts (bundled seeds, the chat template) at T=1 /
top_p 0.95, keeping each step's raw logits; then both ways sample the same rows, in batches of
`--rows` as a decode step would, alternating way by way `--repeats` times, with the same uniforms (so
both draw the same tokens, or tokens of equal logits: bf16 logits tie often, and `topk` and `sort` may order
tied tokens differently; checked). Prints the nuclei's sizes, each way's ms per step and their ratio.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from bench_generation_common import bundled_seed_rows

from common.models import SMALL_MODEL_ALIAS, resolve_model
from evol.operations import OPERATIONS
from evol.templates import evolve_prompt
from generation.prompts import prompt_token_ids
from generation.sampling import sample_tokens


def real_logits(prompts: int, steps: int, threads: int):
    """(prompts x steps, vocab) float32 logits of T=1 decode steps on the job's rewrite prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    path = resolve_model(SMALL_MODEL_ALIAS)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    rng = random.Random(0)
    ids = [prompt_token_ids(evolve_prompt(rng.choice(OPERATIONS), row["instruction"]), "chat", tokenizer)
           for row in bundled_seed_rows(prompts)]
    enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    with torch.inference_mode():
        torch.manual_seed(0)
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=0.95, top_k=None, max_new_tokens=steps,
                             min_new_tokens=steps, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id)
    return torch.cat([step.float() for step in out.logits])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logits = real_logits(args.prompts, args.steps, args.threads)
    vocab = logits.shape[1]
    sizes = sorted(int((torch.softmax(row, -1).sort(descending=True).values.cumsum(-1) < 0.95).sum()) + 1
                   for row in logits)
    print(f"{len(sizes)} rows of real logits (vocab {vocab}): nucleus median {sizes[len(sizes) // 2]} tokens, "
          f"90th percentile {sizes[9 * len(sizes) // 10]}, over 256: {sum(s > 256 for s in sizes) / len(sizes):.0%}, "
          f"over 4,096: {sum(s > 4096 for s in sizes) / len(sizes):.1%}", flush=True)
    ways = {"full sort after 256 (before)": dict(wider=vocab), "256, then 4,096, then a full sort (now)": {}}
    for rows in args.rows:
        batches = [logits[i:i + rows] for i in range(0, len(logits) - rows + 1, rows)]
        uniforms = [torch.rand(rows, generator=torch.Generator().manual_seed(i)) for i in range(len(batches))]
        seconds = {way: [] for way in ways}
        drawn = {}
        for _ in range(args.repeats):
            for way, extra in ways.items():
                start = time.perf_counter()
                drawn[way] = [sample_tokens(b, 1.0, 0.95, uniforms=u, **extra) for b, u in zip(batches, uniforms)]
                seconds[way].append((time.perf_counter() - start) / len(batches))
        same = all(torch.equal(batch.gather(1, a[:, None]), batch.gather(1, b[:, None]))
                   for batch, a, b in zip(batches, *drawn.values()))
        ms = {way: 1000 * statistics.median(s) for way, s in seconds.items()}
        before, now = ms.values()
        print(f"{rows} rows per step: " + ", ".join(f"{way} {value:.2f} ms" for way, value in ms.items())
              + f"; now/before {now / before:.2f}x; the same tokens drawn (or tied ones): {same}", flush=True)


if __name__ == "__main__":
    main()
