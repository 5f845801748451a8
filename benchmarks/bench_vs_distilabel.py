"""The evolve job vs distilabel's EvolInstruct (a user's alternative), one after the other, on the same
model, seeds, rounds and token caps: generated tokens/s and wall time.

    python benchmarks/bench_vs_distilabel.py [--seeds 8] [--rounds 2] [--max-tokens 256] [--dtype float32]
                                             [--backends hf,vllm] [--threads N] [--override KEY=VALUE ...]

distilabel 1.5.3 with TransformersLLM is installed by this script into its own venv
(~/.cache/evolray/distilabel-1.5.3; torch from pip's own index, transformers 4.48.3), never into the
project's. Its side (benchmarks/distilabel_evolinstruct.py) runs the EvolInstruct step alone (no Pipeline):
every evolution stored and answered. Our side is the real job, `python -m jobs.evolve` (Ray, the actor
pool, buckets, writes), with the seeds' own answers (like distilabel, only evolutions are answered).
Our tokens/s: the summary's generated tokens over its wall time (pool start and model load included),
and over the chains' span (first chain's start to last chain's end: like distilabel's, no model load);
distilabel's: generated tokens over the step's time (model load excluded). Prints each side, then the
job/distilabel ratios of tokens/s last.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path.home() / ".cache" / "evolray" / "distilabel-1.5.3"
PINS = ["torch==2.13.0", "distilabel[hf-transformers]==1.5.3", "transformers==4.48.3"]


def distilabel_python() -> str:
    """The venv's python, made on first use."""
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
        (VENV / ".installed").touch()
    return str(python)


def write_seeds(count: int, path: Path) -> None:
    lines = (ROOT / "evol" / "data" / "self_instruct_seeds.jsonl").read_text().splitlines()[:count]
    path.write_text("\n".join(lines) + "\n")


def run_job(backend: str, seeds: Path, args, out: str) -> dict:
    from bench_generation_common import engine_shape

    overrides = [f"seeds.path={seeds}", "seeds.limit=null", f"evolve.rounds={args.rounds}",
                 f"evolve.evolve_sampling.max_tokens={args.max_tokens}",
                 f"evolve.respond_sampling.max_tokens={args.max_tokens}", f"generation.backend={backend}",
                 f"generation.dtype={args.dtype}", *engine_shape(backend, args.threads),
                 f"output.path={out}", "output.overwrite=true"]
    if backend == "vllm":
        # vLLM sized by its own rule (docs/evolve.md, "Sizing chains in flight"): max_chains null means
        # vllm.max_num_seqs, every seed in flight; configs/local.yaml's 32 is the hf sizing (4 x batch_size).
        overrides += ["generation.vllm.enforce_eager=true", "generation.vllm.max_model_len=2048",
                      "generation.max_chains=null"]
    overrides += args.override
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/local.yaml", *overrides], cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads(Path(out, "summary.json").read_text())
    # Like distilabel's step time (its model load excluded): the chains' span, first chain's start to the
    # last one's end over the pool's actors (their start and model load excluded).
    spans = [actor["chain_seconds"] for actor in summary["actors"].values() if actor.get("chain_seconds")]
    return {"requests": summary["requests"], "generated_tokens": summary["generated_tokens"],
            "seconds": summary["wall_seconds"], "generation_seconds": max(spans, default=None), "process_seconds": wall}


def run_distilabel(model: str, seeds: Path, args) -> dict:
    start = time.perf_counter()
    done = subprocess.run([distilabel_python(), str(ROOT / "benchmarks" / "distilabel_evolinstruct.py"), model,
                           str(seeds), str(args.rounds), str(args.max_tokens), args.dtype, str(args.threads or 2)],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"seconds": result["step_seconds"], "process_seconds": time.perf_counter() - start}


def line(name: str, r: dict) -> str:
    text = (f"{name:>18}: {r['requests']} requests, {r['generated_tokens']} tokens in {r['seconds']:.1f} s = "
            f"{r['generated_tokens'] / r['seconds']:.1f} tok/s (process wall {r['process_seconds']:.1f} s)")
    if r.get("generation_seconds"):
        text += (f"; over the chains' span ({r['generation_seconds']:.1f} s, no start or model load): "
                 f"{r['generated_tokens'] / r['generation_seconds']:.1f} tok/s")
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--threads", type=int, default=None, help="distilabel's torch threads (default 2); for the "
                        "job, hf as one actor of this many threads instead of the preset's one 1-thread actor per core")
    parser.add_argument("--override", action="append", default=[], help="a dotted override for the job (repeatable)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from common.models import ensure_small_model

    model = str(ensure_small_model())
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        write_seeds(args.seeds, seeds)
        theirs = run_distilabel(model, seeds, args)
        print(line("distilabel", theirs) + f"; {theirs['at_token_cap']} of {theirs['requests']} outputs at the token cap",
              flush=True)
        ours = {}
        for backend in args.backends.split(","):
            ours[backend] = run_job(backend, seeds, args, str(Path(tmp) / f"out-{backend}"))
            print(line(f"evolve job ({backend})", ours[backend]), flush=True)
    rate = theirs["generated_tokens"] / theirs["seconds"]
    for backend, r in ours.items():
        span = (f"; over the chains' span = {r['generated_tokens'] / r['generation_seconds'] / rate:.2f}x"
                if r.get("generation_seconds") else "")
        print(f"{backend}: job/distilabel tokens/s = {r['generated_tokens'] / r['seconds'] / rate:.2f}x{span}; "
              f"process wall job/distilabel = {r['process_seconds'] / theirs['process_seconds']:.2f}x")


if __name__ == "__main__":
    main()
