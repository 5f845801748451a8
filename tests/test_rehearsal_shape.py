"""The rehearsal's fake cluster (tests/rehearsal.py) is cluster.yaml's, scaled down to one machine."""
from pathlib import Path

import yaml

from tests.rehearsal import GENERATION_TYPE, TRAINING_TYPE, autoscaling_config, fake_node_types


def test_fake_node_types_are_cluster_yamls_scaled_down():
    cluster = yaml.safe_load(Path("cluster.yaml").read_text())
    types = fake_node_types(cluster)
    assert set(types) == {"ray.head.default"} | (set(cluster["available_node_types"]) - {cluster["head_node_type"]})
    generation, training = types[GENERATION_TYPE], types[TRAINING_TYPE]
    assert (generation["resources"]["GPU"], training["resources"]["GPU"]) == (1, 2)  # 4 and 8 GPUs, divided by 4
    assert (generation["resources"]["CPU"], training["resources"]["CPU"]) == (1, 2)  # a CPU per GPU
    assert generation["resources"]["accelerator_type:L4"] == 1 and training["resources"]["accelerator_type:A100"] == 1
    assert generation["min_workers"] == training["min_workers"] == 0  # from zero
    assert types["ray.head.default"]["max_workers"] == 0 and "GPU" not in types["ray.head.default"]["resources"]
    config = autoscaling_config(types, "127.0.0.1:1", "/tmp/root", "/tmp/temp")
    assert config["provider"]["module"] == "tests.fake_node.IsolatedFakeProvider"
    assert config["max_workers"] == sum(t["max_workers"] for t in types.values())
