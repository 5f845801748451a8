"""Every evaluate config loads; bad values are one-line errors before Ray starts."""
import json
from pathlib import Path

import pytest

from common.config import ConfigError, load_config
from eval.config import EvaluateConfig
from eval.testset import ItemFields
from evol.config import EvolveConfig
from generation.prompts import PROMPT_FORMAT_OF_TEMPLATE
from jobs.evaluate import main
from pipeline.config import PipelineConfig
from tests.config_files import yamls_for

ROOT = Path(__file__).resolve().parents[1]


def test_every_evaluate_yaml_in_configs_loads():
    paths = yamls_for("evaluate")
    assert {"configs/evaluate_local.yaml", "configs/evaluate_tiny.yaml"} <= set(paths)
    for path in paths:
        cfg = load_config(EvaluateConfig, path)
        assert cfg.candidate.model and cfg.judge.model


def test_embedded_default_compares_the_make_run_model_with_its_base_and_says_it_is_a_smoke_test():
    """`make evaluate` after `make run` measures the model `make run` trained, prompted as it was trained."""
    cfg = load_config(EvaluateConfig, "configs/evaluate_local.yaml")
    run = load_config(PipelineConfig, "configs/pipeline_local.yaml")
    assert cfg.candidate.model == run.train.output.path and cfg.evolution.output == run.evolve.output.path
    assert cfg.candidate.prompt_format == PROMPT_FORMAT_OF_TEMPLATE[run.train.data.template] == "wizardlm"
    assert cfg.baseline.model == cfg.judge.model == run.train.model.name
    assert "smoke test" in cfg.report.note
    assert cfg.testset.per_category == 1 and cfg.testset.limit is None  # every skill, both orders, every band
    assert cfg.judge_prefill and cfg.judge.prompt_format == "plain"  # else a 135M judge gives no scores


def test_field_mapping_and_overrides():
    cfg = load_config(EvaluateConfig, "configs/evaluate_tiny.yaml",
                      ["testset.instruction_field=prompt", "testset.difficulty_field=null", "testset.id_field=qid",
                       "judge.concurrency=[1, 3]"])
    assert cfg.testset.fields() == ItemFields(instruction="prompt", id="qid", category="Skill", difficulty=None)
    assert cfg.judge.concurrency == (1, 3)


@pytest.mark.parametrize("override, expected", [
    ("testset.limit=0", "config error: testset.limit: Input should be greater than or equal to 1 (got 0)"),
    ("judge.backend=magic", "config error: judge.backend:"),
    ("report.confidence=1.5", "config error: report.confidence: Input should be less than 1 (got 1.5)"),
    ("baseline.modle=x", "config error: baseline.modle: unknown key"),
    ("judge_prefill=true", "config error: judge_prefill needs judge.prompt_format=plain"),
    ("candidate.vllm.max_model_len=2048", "config error: candidate.vllm.max_model_len: 2048 cannot hold "
     "candidate.max_prompt_tokens=2048 plus answer_sampling.max_tokens=8"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(EvaluateConfig, "configs/evaluate_tiny.yaml",
                    [override] + (["candidate.backend=vllm"] if override.startswith("candidate.vllm") else []))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_candidate_is_required(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("testset: {limit: 2}\n")
    with pytest.raises(ConfigError, match="candidate: required key is missing"):
        load_config(EvaluateConfig, path)


def test_cli_exits_2_with_one_line_for_bad_input(tmp_path, capsys):
    assert main(["--config", "configs/evaluate_tiny.yaml", "judge.backend=magic"]) == 2
    assert capsys.readouterr().err.startswith("config error: judge.backend:")
    args = ["--config", "configs/evaluate_tiny.yaml", f"testset.path={tmp_path}/none.jsonl",
            f"output.path={tmp_path}/out"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"error: testset.path: {tmp_path}/none.jsonl does not exist"


def test_output_folder_of_something_else_is_never_written_into_or_deleted(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.jsonl").write_text(json.dumps({"Instruction": "Hi?", "idx": 1}) + "\n")
    base = ["--config", "configs/evaluate_tiny.yaml", f"output.path={out}", "testset.category_field=null",
            "testset.difficulty_field=null"]
    assert main(base) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: output.path: {out} holds files of something else than an evaluate run; choose another folder"
    assert main(base + ["output.overwrite=true"]) == 2
    assert "was not created by an evolray evaluate run; refusing to delete it" in capsys.readouterr().err
    assert main(base + ["output.overwrite=true", f"testset.path={out / 'mine.jsonl'}"]) == 2
    assert "holds an input" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.jsonl"]


def test_a_mistyped_evolution_output_leaves_the_last_report_in_place(tmp_path, capsys):
    """The earlier run's report was deleted before the evolution folder was found missing."""
    from common import storage
    from eval.preflight import JOB

    out = tmp_path / "out"
    out.mkdir()
    storage.mark_owned(str(out), JOB)
    (out / "report.html").write_text("<html>the last report</html>")
    assert main(["--config", "configs/evaluate_tiny.yaml", "candidate.backend=echo", f"output.path={out}",
                 f"evolution.output={tmp_path}/evolve-typo"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: evolution.output: {tmp_path}/evolve-typo has no records/ "
                                               "folder (is it an evolve job's output?)")
    assert (out / "report.html").read_text() == "<html>the last report</html>"


def test_cloud_example_price_is_for_the_node_type_and_region_that_cluster_yaml_gives_the_evolve_actors():
    import yaml

    cluster = yaml.safe_load(open("cluster.yaml"))
    node = cluster["available_node_types"]["gpu_generation"]
    instance, gpus = node["node_config"]["InstanceType"], node["resources"]["GPU"]
    text = open("configs/evolve_cluster.yaml").read()
    comment = text[text.index("cost:"):]
    assert instance == "g6.12xlarge" and f"{instance} on-demand (4x L4" in comment
    assert f"in {cluster['provider']['region']} (cluster.yaml's region)" in comment
    price = load_config(EvolveConfig, "configs/evolve_cluster.yaml").cost.price_per_accelerator_hour
    assert price == pytest.approx(4.6016 / gpus, abs=0.005)  # the node's hourly price per GPU


def test_a_local_engines_model_folder_is_pinned_and_an_endpoints_model_name_is_not(tmp_path, monkeypatch):
    """`vllm serve models/served` serves the name "models/served": a folder of that name in the working
    folder made evaluate (and evolve) ask the endpoint for /abs/.../models/served, a 404 per request."""
    from eval.pipeline import with_absolute_paths
    from evol.identity import with_absolute_paths as evolve_paths

    (tmp_path / "models" / "served").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    endpoint = ["backend=openai", "model=models/served", "openai.base_url=http://127.0.0.1:9/v1"]
    cfg = with_absolute_paths(load_config(EvaluateConfig, ROOT / "configs" / "evaluate_tiny.yaml", [
        "candidate.model=models/served", *(f"baseline.{o}" for o in endpoint), *(f"judge.{o}" for o in endpoint)]))
    assert (cfg.candidate.model, cfg.baseline.model, cfg.judge.model) == \
        (str(tmp_path / "models" / "served"), "models/served", "models/served")
    evolve = evolve_paths(load_config(EvolveConfig, None, [*(f"generation.{o}" for o in endpoint)]))
    assert evolve.generation.model == "models/served"
