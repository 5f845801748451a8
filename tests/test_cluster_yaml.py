import pytest
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


def _node_types() -> dict:
    with open("cluster.yaml") as f:
        return {name: t for name, t in yaml.safe_load(f)["available_node_types"].items() if name != "head"}


def _fits(cpus: float, gpus: float, node: dict) -> bool:
    have = node["resources"]
    return cpus <= have.get("CPU", 0) and gpus <= have.get("GPU", 0)


def test_every_gpu_reservation_of_the_cloud_pipeline_fits_a_worker_type():
    """vLLM actors reserve num_gpus = tensor-parallel size; the train job 1 GPU + cpus_per_worker per
    worker: each must fit one node of cluster.yaml, and the train job's workers the largest pool."""
    from common.config import load_config
    from pipeline.config import PipelineConfig

    cfg = load_config(PipelineConfig, "configs/pipeline_cloud_7b.yaml")
    nodes = _node_types()
    roles = [cfg.evolve.generation] + [getattr(cfg.evaluate, r) for r in ("candidate", "baseline", "judge")]
    for gen in roles:
        if gen.backend == "vllm":
            assert gen.num_gpus == gen.vllm.tensor_parallel_size
            assert any(_fits(gen.num_cpus, gen.num_gpus, n) for n in nodes.values()), gen.model
    s = cfg.train.scaling
    assert s.use_gpu
    assert any(_fits(s.cpus_per_worker, 1, n) for n in nodes.values())
    assert any(s.num_workers <= n["max_workers"] * min(n["resources"]["GPU"], n["resources"]["CPU"] // s.cpus_per_worker)
               for n in nodes.values())


@pytest.mark.parametrize("preset", ["configs/train_cloud_7b.yaml", "configs/train_cloud_7b_lora.yaml"])
def test_every_train_preset_lands_on_the_training_nodes(preset):
    """Without accelerator_type, Ray Train may pack its 8 workers onto idle L4 generation nodes (one GPU
    and 8 CPUs each fit there): the LoRA preset, the pipeline's documented switch, had none."""
    from common.config import load_config
    from train.config import TrainConfig

    scaling = load_config(TrainConfig, preset).scaling
    training = [n for n in _node_types().values() if f"accelerator_type:{scaling.accelerator_type}" in n["resources"]]
    assert scaling.accelerator_type == "A100" and training
    assert all(_fits(scaling.cpus_per_worker, 1, n) for n in training)


def test_the_cloud_evaluation_engines_fit_a_llama_7b_context():
    """LLaMA-7B and Vicuna-7B v1.1 hold 2048 tokens: vLLM refuses a larger max_model_len at start, after
    the evolve and train stages; prompt plus answer must fit in it."""
    from common.config import load_config
    from pipeline.config import PipelineConfig

    cfg = load_config(PipelineConfig, "configs/pipeline_cloud_7b.yaml").evaluate
    for gen in (cfg.candidate, cfg.baseline):
        assert gen.vllm.max_model_len == 2048
        assert gen.max_prompt_tokens + cfg.answer_sampling.max_tokens <= gen.vllm.max_model_len
