"""Every evolve config loads; bad keys and values are one-line errors before any work."""
import pytest

from common.config import ConfigError, load_config, parse_override
from evol.config import EvolveConfig
from evol.elimination import MIN_JUDGE_TOKENS
from tests.config_files import yamls_for


def test_every_evolve_yaml_in_configs_loads():
    paths = yamls_for("evolve")
    assert {"configs/local.yaml", "configs/tiny.yaml", "configs/evolve_cluster.yaml"} <= set(paths)
    for path in paths:
        cfg = load_config(EvolveConfig, path)
        assert cfg.evolve.rounds >= 1
        assert cfg.evolve.judge_sampling.max_tokens >= MIN_JUDGE_TOKENS


def test_the_cluster_preset_evolves_every_seed_and_keeps_earlier_runs():
    cfg = load_config(EvolveConfig, "configs/evolve_cluster.yaml")
    assert cfg.seeds.limit is None and cfg.output.overwrite is False
    assert cfg.generation.backend == "vllm" and cfg.generation.num_gpus == cfg.generation.vllm.tensor_parallel_size
    assert cfg.seeds.path.startswith("s3://") and cfg.output.path.startswith("s3://")
    assert cfg.evolve.rounds == 4 and cfg.evolve.train_on_truncated_responses is False


def test_new_settings_and_their_defaults():
    cfg = EvolveConfig()
    assert cfg.evolve.train_on_truncated_responses is False
    assert cfg.evolve.judge_sampling.max_tokens == MIN_JUDGE_TOKENS == 16
    assert cfg.seeds.piece_bytes == 64 << 20
    allowed = load_config(EvolveConfig, "configs/tiny.yaml", ["evolve.train_on_truncated_responses=true"])
    assert allowed.evolve.train_on_truncated_responses is True


@pytest.mark.parametrize("overrides, expected", [
    (["evolve.judge_sampling.max_tokens=8"],
     "config error: evolve.judge_sampling: max_tokens 8 can cut the verdict itself; use at least 16"),
    (["generation.max_prompt_tokens=1100"],
     "config error: generation.max_prompt_tokens: 1100 cannot hold an evolve prompt: 116 words (at least as "
     "many tokens) of template + 1024 tokens of instructions (seeds.max_instruction_tokens, "
     "evolve.evolve_sampling.max_tokens) + 8 = 1148"),
    (["seeds.max_instruction_tokens=64", "evolve.evolve_sampling.max_tokens=600", "generation.max_prompt_tokens=1200"],
     "config error: generation.max_prompt_tokens: 1200 cannot hold the equality prompt: 39 words (at least as "
     "many tokens) of template + 1200 tokens of instructions"),
    (["judge={backend: hf, max_prompt_tokens: 1000}"],
     "config error: judge.max_prompt_tokens: 1000 cannot hold the equality prompt"),
])
def test_a_prompt_limit_that_would_cut_the_template_is_refused(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(EvolveConfig, "configs/tiny.yaml", overrides)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_prompt_limits_are_not_checked_for_backends_that_do_not_cut_prompts():
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", ["generation.backend=echo", "generation.max_prompt_tokens=16"])
    assert cfg.generation.max_prompt_tokens == 16


def test_dotted_overrides_are_typed():
    cfg = load_config(EvolveConfig, "configs/local.yaml",
                      ["evolve.rounds=2", "generation.concurrency=[1, 3]", "output.overwrite=false",
                       "seeds.input_field=null"])
    assert cfg.evolve.rounds == 2
    assert cfg.generation.concurrency == (1, 3)
    assert cfg.output.overwrite is False
    assert cfg.seeds.input_field is None


@pytest.mark.parametrize("override, expected", [
    ("evolve.roundz=2", "config error: evolve.roundz: unknown key"),
    ("evolve.rounds=0", "config error: evolve.rounds: Input should be greater than or equal to 1 (got 0)"),
    ("evolve.operations=[deepening, sideways]", "unknown operation 'sideways'"),
    ("generation.concurrency=[2, 1]", "concurrency must be [min, max]"),
    ("generation.backend=magic", "config error: generation.backend:"),
    ("evolve.rounds.deep=1", "evolve.rounds is a value, not a section"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(EvolveConfig, "configs/local.yaml", [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("job, config, key", [
    ("evolve", "configs/tiny.yaml", "seeds.path"), ("evolve", "configs/tiny.yaml", "output.path"),
    ("evolve", "configs/tiny.yaml", "generation.model"), ("evaluate", "configs/evaluate_tiny.yaml", "testset.path"),
    ("evaluate", "configs/evaluate_tiny.yaml", "evolution.output"), ("train", "configs/train_tiny.yaml", "data.path"),
    ("train", "configs/train_tiny.yaml", "model.name"), ("pipeline", "configs/pipeline_tiny.yaml", "evolve.seeds.path"),
    ("pipeline", "configs/pipeline_tiny.yaml", "output.path")])
def test_a_blank_path_is_refused_not_read_as_the_working_folder(job, config, key):
    """`seeds.path=$UNSET` reached every file API as "", the working folder: evaluate read every json
    file under it (a venv's included) and ended with exit 0."""
    from eval.config import EvaluateConfig
    from pipeline.config import PipelineConfig
    from train.config import TrainConfig

    for blank in ("", "  "):
        with pytest.raises(ConfigError) as info:
            load_config({"evolve": EvolveConfig, "evaluate": EvaluateConfig, "train": TrainConfig,
                         "pipeline": PipelineConfig}[job], config, [f"{key}={blank}"])
        assert str(info.value).startswith(f"config error: {key}: is empty")


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("evolve.rounds")


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(EvolveConfig, tmp_path / "nope.yaml")


def test_config_is_frozen():
    cfg = load_config(EvolveConfig, "configs/local.yaml")
    with pytest.raises(Exception):
        cfg.evolve.rounds = 9


def test_a_local_judge_reserves_its_own_resources_or_is_refused_on_the_writers_gpu():
    from evol.config import actor_resources

    cpu_judge = load_config(EvolveConfig, None, ["judge.backend=hf", "judge.device=cpu", "judge.num_cpus=2",
                                                 "generation.num_cpus=4", "generation.num_gpus=1",
                                                 "generation.backend=vllm"])
    assert actor_resources(cpu_judge) == (6.0, 1.0)  # the actor's reservation covers writer + judge
    api_judge = load_config(EvolveConfig, None, ["judge.backend=openai", "judge.model=gpt-4o", "judge.num_cpus=2",
                                                 "generation.num_gpus=1", "generation.backend=vllm"])
    assert actor_resources(api_judge) == (1.0, 1.0)  # a remote judge runs no engine in the actor
    with pytest.raises(ConfigError) as error:
        load_config(EvolveConfig, None, ["judge.backend=vllm", "judge.num_gpus=1", "generation.backend=vllm",
                                         "generation.num_gpus=1"])
    assert str(error.value) == (
        "config error: judge.device: a local judge runs in the writer's actor, whose GPUs the writer uses; set "
        "judge.device=cpu and judge.num_gpus=0, or use an openai judge (e.g. a vLLM server)")
    with pytest.raises(ConfigError, match="generation.device: the writer runs in the actor of a local judge on GPUs"):
        load_config(EvolveConfig, None, ["generation.backend=hf", "judge.backend=hf", "judge.num_gpus=1"])


def test_the_shuffle_never_has_fewer_partitions_than_the_pool_has_actors():
    from evol.dataflow import shuffle_partitions

    assert shuffle_partitions(load_config(EvolveConfig, None, ["generation.concurrency=[1,16]"])) == 16
    assert shuffle_partitions(load_config(EvolveConfig, None, ["generation.concurrency=[1,4]"])) == 8


def test_evolve_names_chains_in_flight_once():
    with pytest.raises(ConfigError) as error:
        load_config(EvolveConfig, None, ["generation.rows_per_call=8"])
    assert str(error.value) == ("config error: generation.rows_per_call is not used by evolve; set "
                                "generation.max_chains (seed chains in flight per actor) instead")
    defaults = {backend: load_config(EvolveConfig, None, [f"generation.backend={backend}", "generation.model=m"])
                .generation.chains_in_flight() for backend in ("hf", "vllm", "openai", "echo")}
    assert defaults == {"hf": 32, "vllm": 256, "openai": 32, "echo": 16}  # hf: 4 x batch_size
    assert load_config(EvolveConfig, "configs/evolve_cluster.yaml").generation.chains_in_flight() == 256
