"""Answers of the evaluate job: every row of a call in flight at once vs one request at a time.

    python benchmarks/bench_eval_concurrency.py [--model smollm2-135m-instruct] [--items 32] [--tokens 32]

Runs the answer stage (the job's own EvalActor pool, hf backend, one actor) twice on the same
WizardLM instructions in one local Ray: first with one request in flight per actor
(rows_per_call=1, calls_per_actor=1), then with 32 in flight (16 rows per call x 2 calls), which the
hf backend gathers into batched generate() calls. Model loading is inside both timings. Prints
generated tokens/s of both, and their ratio last.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from common.config import load_config
from common.ray_setup import init_ray
from eval.config import EvaluateConfig
from eval.pipeline import answers_for, with_absolute_paths
from eval.testset import ItemFields, read_testset, resolve_testset_path, select_items

SETTINGS = {"one at a time": ["candidate.rows_per_call=1", "candidate.calls_per_actor=1", "candidate.batch_size=1"],
            "all in flight": ["candidate.rows_per_call=16", "candidate.calls_per_actor=2", "candidate.batch_size=32"]}


def run(model: str, items: list[dict], tokens: int, overrides: list[str], out: str) -> dict:
    cfg = with_absolute_paths(load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        f"candidate.model={model}", "candidate.dtype=float32", "candidate.torch_threads=2", *overrides,
        f"answer_sampling.max_tokens={tokens}", f"output.path={out}"]))
    init_ray(cfg.ray)
    started = time.perf_counter()
    answers, counts = answers_for(cfg.candidate, cfg.answer_sampling, items, cfg.output.path)
    wall = time.perf_counter() - started
    generated = sum(row["completion_tokens"] for row in answers.values())
    assert counts["generated"] == len(items) and counts["failed"] == 0, counts
    return {"wall": wall, "tokens": generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    rows = read_testset(resolve_testset_path("bundled:wizardlm_testset.jsonl"), ItemFields())
    items = select_items(rows, limit=args.items)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SETTINGS.items():
            results[name] = run(args.model, items, args.tokens, overrides, f"{tmp}/{name.replace(' ', '-')}")
            r = results[name]
            print(f"{name:>14}: {len(items)} answers, {r['tokens']} tokens in {r['wall']:.1f} s = "
                  f"{r['tokens'] / r['wall']:.1f} tokens/s (model load included)")
    one, many = (results[name]["tokens"] / results[name]["wall"] for name in SETTINGS)
    print(f"all in flight vs one at a time: {many / one:.2f}x tokens/s")


if __name__ == "__main__":
    main()
