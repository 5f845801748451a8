"""The train job against s3:// on a local moto server: the tokenizer is read without the weights,
and a whole job (model, checkpoints, TensorBoard events and export on s3) runs from the command line,
printing each progress line once, with the model downloaded into checkpoint.scratch_dir. The job test
runs `python -m jobs.train` in a subprocess with its own local Ray (the S3 endpoint must reach Ray's
workers through their environment): ~4 min on 2 cores.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.s3_fixtures import MotoS3, moto_s3, s3_env  # noqa: F401 (moto_s3 is a fixture)
from train.fixtures import make_tiny_model, synthetic_rows, write_evolved_parquet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(moto_s3, tmp_path_factory) -> str:
    """A fresh EVOLRAY_CACHE while the module runs: the tokenizer and model downloads land there."""
    folder, saved = str(tmp_path_factory.mktemp("cache")), os.environ.get("EVOLRAY_CACHE")
    os.environ["EVOLRAY_CACHE"] = folder
    yield folder
    if saved is None:
        os.environ.pop("EVOLRAY_CACHE", None)
    else:
        os.environ["EVOLRAY_CACHE"] = saved


def upload_dir(s3: MotoS3, local: Path, prefix: str) -> str:
    for path in local.rglob("*"):
        if path.is_file():
            s3.client().upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(local)}")
    return s3.url(prefix)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return Path(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-llama"))  # before EVOLRAY_CACHE moves


@pytest.fixture(scope="module")
def s3_model(tiny_model, moto_s3, cache) -> str:
    return upload_dir(moto_s3, tiny_model, "models/tiny-llama")


def test_tokenizer_of_an_s3_model_is_read_without_its_weights(s3_model, moto_s3, cache):
    from common.tokenizer import load_tokenizer, tokenizer_path

    tokenizer = load_tokenizer(s3_model)
    assert tokenizer("hello world").input_ids
    local = Path(tokenizer_path(s3_model))
    assert local.is_relative_to(cache)
    names = sorted(p.name for p in local.iterdir())
    assert "tokenizer_config.json" in names and "tokenizer.json" in names
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)
    assert any(k.endswith("model.safetensors") for k in moto_s3.keys("models/tiny-llama"))  # it was there to skip


@pytest.mark.parametrize("folder, message", [("none", "cannot read the tokenizer of s3://"),
                                             ("weights-only", "has no tokenizer_config.json")])
def test_missing_s3_tokenizer_is_one_line_error(moto_s3, cache, tiny_model, folder, message):
    from common.config import UserError
    from common.tokenizer import tokenizer_path

    if folder == "weights-only":
        moto_s3.client().upload_file(str(tiny_model / "config.json"), moto_s3.bucket, "models/weights-only/config.json")
    with pytest.raises(UserError) as info:
        tokenizer_path(moto_s3.url("models", folder))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_job_with_checkpoints_and_export_on_s3_prints_each_line_once(s3_model, moto_s3, cache, tmp_path):
    data = write_evolved_parquet(tmp_path / "evolved", synthetic_rows(64, seed=2))
    args = ["--config", "configs/train_tiny.yaml", "name=tiny-s3", f"model.name={s3_model}", f"data.path={data}",
            f"checkpoint.storage_path={moto_s3.url('runs')}", f"output.path={moto_s3.url('exports', 'tiny')}",
            f"checkpoint.scratch_dir={tmp_path / 'scratch'}", "optim.epochs=1", "checkpoint.every_steps=3",
            "sample.generate=false", "ray.address=local", "ray.num_cpus=2"]
    env = os.environ | s3_env() | {"EVOLRAY_CACHE": cache, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line.split("[train] ", 1)[1] for line in done.stdout.splitlines() if "[train] step " in line]
    assert steps and len(steps) == len(set(steps))  # every progress line once (Ray Train echoed prints twice)
    console = done.stdout + done.stderr  # nor torch's deprecations per rank, nor Ray Train's report dicts
    assert "FutureWarning: `torch.distributed" not in console
    assert "Reporting training result" not in console
    total = int(steps[-1].split()[1].split("/")[1])
    assert steps[-1].startswith(f"step {total}/{total} ") and total >= 6  # ~60 samples / 8 per step, 1 epoch
    last = f"runs/tiny-s3/checkpoint-step{total:07d}"
    keys = moto_s3.keys("runs/tiny-s3/")
    assert f"{last}/evolray_plan.json" in keys
    assert any(k.startswith(f"{last}/step{total}/") for k in keys)  # ZeRO-3 shards
    # Each worker downloaded the model into checkpoint.scratch_dir (the node's NVMe), not the cache on
    # the root disk; checkpoint shards and the export were staged there too, then removed.
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["models"]
    assert len(list((tmp_path / "scratch" / "models").glob("*/model.safetensors"))) == 1
    assert not (Path(cache) / "s3").exists()
    assert any(k.startswith("runs/tiny-s3/tensorboard/events.out.tfevents.") for k in keys)
    exported = moto_s3.keys("exports/tiny/")
    assert {"exports/tiny/model.safetensors", "exports/tiny/config.json", "exports/tiny/tokenizer.json",
            "exports/tiny/train_metrics.json"} <= set(exported)
    from transformers import AutoModelForCausalLM

    from common.models import download_from_s3

    model = AutoModelForCausalLM.from_pretrained(download_from_s3(moto_s3.url("exports", "tiny")))
    assert model.config.num_hidden_layers == 2
