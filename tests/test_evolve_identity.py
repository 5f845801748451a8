"""A rerun resumes only what the same inputs would make: the run's identity (config with resolved paths,
fingerprints of seed files and model files) is saved and compared before Ray starts."""
import json
import shutil

import pytest

from common.config import UserError, load_config
from evol.config import EvolveConfig
from evol.identity import model_fingerprint, run_identity
from evol.preflight import preflight
from evol.run import run_evolve
from generation import GenerationConfig
from tests.conftest import build_tiny_llama
from tests.s3_fixtures import moto_s3  # noqa: F401


def _config(seeds, out, *overrides):
    return load_config(EvolveConfig, "configs/tiny.yaml", [
        f"seeds.path={seeds}", f"output.path={out}", "seeds.limit=null", "generation.backend=echo",
        "evolve.rounds=1", "output.overwrite=false", *overrides])


def test_a_finished_run_refuses_an_edited_seed_file_and_accepts_changed_engine_keys(tmp_path, local_ray):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Task {i}."}) + "\n" for i in range(4)))
    run_evolve(_config(seeds, tmp_path / "out"))
    # keys that do not change results: a resume after lowering memory, another endpoint, another pool
    preflight(_config(seeds, tmp_path / "out", "generation.vllm.gpu_memory_utilization=0.5",
                      "generation.vllm.max_num_seqs=8", "generation.vllm.enforce_eager=true",
                      "generation.openai.base_url=http://127.0.0.1:9/v1", "generation.concurrency=[1,2]"))
    seeds.write_text(seeds.read_text().replace("Task 2.", "Task 9."))  # same size, one row edited
    with pytest.raises(UserError) as error:
        preflight(_config(seeds, tmp_path / "out"))
    assert str(error.value) == (f"output.path: {tmp_path / 'out'} holds a run made from other inputs (changed "
                                "since: seeds file seeds.jsonl); choose another output.path, or set "
                                "output.overwrite=true to start over")


def test_the_saved_identity_keeps_bundled_seeds_and_resolves_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    identity = run_identity(load_config(EvolveConfig, None, ["output.path=outputs/run", "generation.backend=echo"]))
    assert identity["seeds"]["path"] == "bundled:self_instruct_seeds.jsonl"
    assert identity["output"]["path"] == str(tmp_path / "outputs" / "run")
    assert list(identity["inputs"]["seeds"]) == ["self_instruct_seeds.jsonl"]
    assert identity["inputs"]["generation"] == {}  # echo loads no model


def test_a_relative_seeds_folder_names_its_files_from_the_folder(tmp_path, monkeypatch):
    """storage.list_files names a folder's files absolutely: a relative seeds.path was 'not inside' it."""
    (tmp_path / "seeds" / "part").mkdir(parents=True)
    (tmp_path / "seeds" / "part" / "a.jsonl").write_text('{"instruction": "x"}\n')
    monkeypatch.chdir(tmp_path)
    identity = run_identity(load_config(EvolveConfig, None, ["seeds.path=seeds", "generation.backend=echo"]))
    assert list(identity["inputs"]["seeds"]) == ["part/a.jsonl"]
    assert identity["seeds"]["path"] == str(tmp_path / "seeds")


def test_an_output_folder_inside_the_seeds_folder_is_refused(tmp_path):
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "a.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(UserError) as error:
        preflight(load_config(EvolveConfig, "configs/tiny.yaml", [
            f"seeds.path={tmp_path / 'seeds'}", f"output.path={tmp_path / 'seeds' / 'out'}", "generation.backend=echo"]))
    assert str(error.value) == (f"output.path: {tmp_path / 'seeds' / 'out'} is inside the seeds folder "
                                f"{tmp_path / 'seeds'} (a rerun would read its files as seeds); choose an output "
                                "folder outside it")


def test_a_model_folder_fingerprint_sees_retrained_weights_but_not_a_copy(tmp_path, tiny_llama):
    gen = GenerationConfig(backend="hf", model=tiny_llama)
    before = model_fingerprint(gen)
    assert "model.safetensors" in before and "config.json" in before
    shutil.copytree(tiny_llama, tmp_path / "copy")  # new mtimes, same files
    assert model_fingerprint(gen.model_copy(update={"model": str(tmp_path / "copy")})) == before
    build_tiny_llama(str(tmp_path / "copy"), seed=1)  # the same shapes, other weights
    after = model_fingerprint(gen.model_copy(update={"model": str(tmp_path / "copy")}))
    assert after["model.safetensors"] != before["model.safetensors"]
    assert after["model.safetensors"].split(":")[0] == before["model.safetensors"].split(":")[0]  # same size


def test_an_s3_model_fingerprint_is_its_objects_etags(moto_s3):  # noqa: F811
    client = moto_s3.client()
    for name, body in (("config.json", b"{}"), ("model.safetensors", b"weights-1")):
        client.put_object(Bucket=moto_s3.bucket, Key=f"models/m/{name}", Body=body)
    client.put_object(Bucket=moto_s3.bucket, Key="models/m2/config.json", Body=b"other model")
    gen = GenerationConfig(backend="vllm", model=moto_s3.url("models", "m"))
    before = model_fingerprint(gen)
    assert sorted(before) == ["config.json", "model.safetensors"]
    client.put_object(Bucket=moto_s3.bucket, Key="models/m/model.safetensors", Body=b"weights-2")
    after = model_fingerprint(gen)
    assert after["config.json"] == before["config.json"] and after["model.safetensors"] != before["model.safetensors"]
