"""The train job against s3:// on a local moto server: the tokenizer is read without the weights,
and a whole job (model, checkpoints and export on s3) runs from the command line, printing each
progress line once. The job test runs `python -m jobs.train` in a subprocess with its own local
Ray (the S3 endpoint must reach Ray's workers through their environment): ~2-3 min on 2 cores.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.fixtures import make_tiny_model, synthetic_rows, write_evolved_parquet

BUCKET = "evolray-test"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket, and the environment that points at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "EVOLRAY_CACHE": str(tmp_path_factory.mktemp("cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def upload_dir(local: Path, prefix: str) -> str:
    import boto3

    client = boto3.client("s3")
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local)}")
    return f"s3://{BUCKET}/{prefix}"


def s3_keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return Path(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-llama"))  # before EVOLRAY_CACHE moves


@pytest.fixture(scope="module")
def s3_model(tiny_model, s3_env) -> str:
    return upload_dir(tiny_model, "models/tiny-llama")


def test_tokenizer_of_an_s3_model_is_read_without_its_weights(s3_model, s3_env):
    from train.tokenizer import load_tokenizer, tokenizer_path

    tokenizer = load_tokenizer(s3_model)
    assert tokenizer("hello world").input_ids
    local = Path(tokenizer_path(s3_model))
    assert local.is_relative_to(s3_env["EVOLRAY_CACHE"])
    names = sorted(p.name for p in local.iterdir())
    assert "tokenizer_config.json" in names and "tokenizer.json" in names
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)
    assert any(k.endswith("model.safetensors") for k in s3_keys("models/tiny-llama"))  # it was there to skip


@pytest.mark.parametrize("folder, message", [("none", "cannot read the tokenizer of s3://"),
                                             ("weights-only", "has no tokenizer_config.json")])
def test_missing_s3_tokenizer_is_one_line_error(s3_env, tiny_model, folder, message):
    from common.config import UserError
    from train.tokenizer import tokenizer_path

    if folder == "weights-only":
        import boto3

        boto3.client("s3").upload_file(str(tiny_model / "config.json"), BUCKET, "models/weights-only/config.json")
    with pytest.raises(UserError) as info:
        tokenizer_path(f"s3://{BUCKET}/models/{folder}")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_job_with_checkpoints_and_export_on_s3_prints_each_line_once(s3_model, s3_env, tmp_path):
    data = write_evolved_parquet(tmp_path / "evolved", synthetic_rows(64, seed=2))
    args = ["--config", "configs/train_tiny.yaml", "name=tiny-s3", f"model.name={s3_model}", f"data.path={data}",
            f"checkpoint.storage_path=s3://{BUCKET}/runs", f"output.path=s3://{BUCKET}/exports/tiny",
            f"checkpoint.scratch_dir={tmp_path / 'scratch'}", "optim.epochs=1", "checkpoint.every_steps=3",
            "sample.generate=false", "ray.address=local", "ray.num_cpus=2"]
    env = os.environ | s3_env | {"PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line.split("[train] ", 1)[1] for line in done.stdout.splitlines() if "[train] step " in line]
    assert steps and len(steps) == len(set(steps))  # every progress line once (Ray Train echoed prints twice)
    total = int(steps[-1].split()[1].split("/")[1])
    assert steps[-1].startswith(f"step {total}/{total} ") and total >= 6  # ~60 samples / 8 per step, 1 epoch
    last = f"runs/tiny-s3/checkpoint-step{total:07d}"
    keys = s3_keys("runs/tiny-s3/")
    assert f"{last}/evolray_plan.json" in keys
    assert any(k.startswith(f"{last}/step{total}/") for k in keys)  # ZeRO-3 shards
    assert not any((tmp_path / "scratch").iterdir())  # staged there, then removed
    exported = s3_keys("exports/tiny/")
    assert {"exports/tiny/model.safetensors", "exports/tiny/config.json", "exports/tiny/tokenizer.json",
            "exports/tiny/train_metrics.json"} <= set(exported)
    from transformers import AutoModelForCausalLM

    from common.models import download_from_s3

    model = AutoModelForCausalLM.from_pretrained(download_from_s3(f"s3://{BUCKET}/exports/tiny"))
    assert model.config.num_hidden_layers == 2
