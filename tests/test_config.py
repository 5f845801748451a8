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
