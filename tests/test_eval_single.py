"""Single-answer grading (MT-bench style) for a model without a baseline, end to end on a local Ray
with a scripted judge whose grades are known in advance."""
import re
import sys

import cloudpickle
import pyarrow.parquet as pq
import pytest

from common.config import ConfigError, load_config
from eval.config import EvaluateConfig
from eval.judge import GRADE_REMINDER
from eval.pipeline import run_evaluate
from generation.types import Generation

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ScriptedGrader:
    """8 for every answer, 3 for the one about the longest increasing subsequence; the answer about
    the computer network gets an unreadable grade first and a readable 6 when reminded."""

    model_name = "grader"

    def __init__(self, cfg=None):
        pass

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    async def generate(self, prompt, sampling):
        assert "[Reply]" in prompt and "[Reply A]" not in prompt  # one answer, alone
        if "computer network" in prompt:
            text = "Score: 6" if prompt.endswith(GRADE_REMINDER) else "A fine reply."
        else:
            text = f"Score: {3 if 'longest increasing' in prompt else 8}\nReason: scripted."
        return Generation(text, prompt_tokens=len(prompt.split()), completion_tokens=4, finished=True)

    async def close(self):
        pass


def test_single_answer_grading_of_a_model_without_a_baseline(local_ray, tmp_path):
    out = tmp_path / "eval"
    cfg = load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        "mode=single", "baseline=null", "candidate.backend=echo", "candidate.model=echo-candidate",
        "candidate.num_cpus=0.5", "judge.model=scripted-grader", f"output.path={out}"])
    summary = run_evaluate(cfg, {"judge": ScriptedGrader})
    agg = summary["aggregates"]
    assert agg["mode"] == "single" and list(agg["grades"]) == ["candidate"]
    grades = agg["grades"]["candidate"]  # items 1, 20 (longest increasing: 3), 38, 56 (computer network: 6)
    assert (grades["n"], grades["mean"]) == (4, pytest.approx(25 / 4))
    assert grades["se"] == pytest.approx(((8 - 6.25) ** 2 * 2 + 3.25 ** 2 + 0.25 ** 2) ** 0.5 / 3 ** 0.5 / 2)
    assert {band: g["mean"] for band, g in agg["by_band"]["candidate"].items()} == {"1-4": 8.0, "5-7": 3.0,
                                                                                    "8-10": 6.0}
    assert agg["verdicts"] == {"verdicts": 4, "failed": 0, "unreadable": 0, "failures": {}, "retried": 1}
    assert summary["verdicts"] == {"reused": 0, "generated": 4, "failed": 0}
    report = (out / "report.md").read_text()
    assert report.startswith("# Evaluation: echo-candidate\n\nEach answer was graded alone from 1 to 10 "
                             "(single-answer grading; ± one standard error): the candidate's mean grade is "
                             "**6.25/10** ± 1.18 (4 answers graded).")
    assert re.findall(r"^## (.+)$", report, re.MULTILINE)[:2] == ["Grades by difficulty", "Per category"]
    assert "| 5-7 | 1 | 3.00 |" in report and "| Code Generation | 1 | 3.00 |" in report
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert [(r["id"], r["candidate_score"]) for r in items] == [("1", 8.0), ("20", 3.0), ("38", 8.0), ("56", 6.0)]
    assert items[3]["candidate_grade_first_attempt"] == "A fine reply." and items[3]["candidate_grade_attempts"] == 2
    again = run_evaluate(cfg, {"judge": ScriptedGrader})
    assert again["verdicts"] == {"reused": 4, "generated": 0, "failed": 0}


def test_pairwise_needs_a_baseline():
    with pytest.raises(ConfigError, match="baseline: mode pairwise compares the candidate with a baseline"):
        load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", ["baseline=null"])
