import yaml


def test_cluster_yaml_passes_rays_own_schema_and_keeps_the_dashboard_private():
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open("cluster.yaml") as f:
        config = yaml.safe_load(f)
    validate_config(prepare_config(config))  # raises on a schema violation
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert all(t["min_workers"] == 0 for name, t in config["available_node_types"].items() if name != "head")
    assert "aws_access_key_id" not in open("cluster.yaml").read().lower()
