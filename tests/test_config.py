import glob

import pytest

from common.config import ConfigError, load_config, parse_override
from evol.config import EvolveConfig


def test_every_evolve_yaml_in_configs_loads():
    paths = [p for p in glob.glob("configs/*.yaml") if not p.split("/")[-1].startswith("train_")]
    assert paths, "no evolve configs found"
    for path in paths:
        cfg = load_config(EvolveConfig, path)
        assert cfg.evolve.rounds >= 1


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
