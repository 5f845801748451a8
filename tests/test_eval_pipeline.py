"""The evaluate job end to end on a local 2-CPU Ray: the echo backend and fake generators (objects
with the generator's async methods) whose answers and verdicts are scripted, so every number of
the report is known in advance."""
import base64
import json
import re
import sys

import cloudpickle
import pyarrow.parquet as pq
import pytest

from common.config import load_config
from eval.config import EvaluateConfig
from eval.judge import RETRY_REMINDER
from eval.pipeline import run_evaluate
from generation.types import Generation, GenerationError
from tests.test_eval_evolution import make_evolve_output

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fakes travel to Ray's actors by value

CANDIDATE, BASELINE = "Canned answer", "Baseline reply"


class FakeGenerator:
    model_name = "fake"

    def __init__(self, cfg=None):
        pass

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    async def close(self):
        pass

    async def generate(self, prompt, sampling):
        return Generation(self.reply(prompt), prompt_tokens=len(prompt.split()), completion_tokens=3,
                          finished="family of six" not in prompt)


class Baseline(FakeGenerator):
    """Answers every item the same way, and fails for good on the item about 120 miles; its answer
    about the family of six is cut by its token limit."""

    def reply(self, prompt):
        if "120 miles" in prompt:
            raise GenerationError("http_500", "server error")
        return f"{BASELINE}."


class ScriptedJudge(FakeGenerator):
    """Candidate 8, baseline 4, plus 1 for the reply shown first (a position bias), except:
    'longest increasing' the candidate loses 3 vs 7; 'experienced writer' the first try is
    unreadable; 'computer network' with the baseline first is always out of range; 'family of six'
    is 5 vs 5, so the bias alone decides and the two orders disagree."""

    def reply(self, prompt):
        if prompt.startswith("Rate how hard"):  # rating an evolved instruction: 2 x its round + 1
            round_index = int(re.search(r"of round (\d+)", prompt).group(1))
            return f"Difficulty: {2 * round_index + 1}"
        candidate_first = prompt.index(CANDIDATE) < prompt.index(BASELINE)
        cand, base = (3, 7) if "longest increasing" in prompt else (5, 5) if "family of six" in prompt else (8, 4)
        first, second = (cand + 1, base) if candidate_first else (base + 1, cand)
        if "experienced writer" in prompt and not prompt.endswith(RETRY_REMINDER):
            return "I like reply A."
        if "computer network" in prompt and not candidate_first:
            return "Score A: 12\nScore B: 3"
        return f"Score A: {first}\nScore B: {second}\nReason: scripted."


FACTORIES = {"baseline": Baseline, "judge": ScriptedJudge}


def wizardlm_config(out, *overrides):
    return load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        "testset.limit=6", "candidate.backend=echo", "candidate.model=echo-candidate", "candidate.num_cpus=0.5",
        "baseline.model=scripted-baseline", "judge.model=scripted-judge", f"output.path={out}",
        "report.bootstrap_samples=300", *overrides])


def test_wizardlm_slice_report_has_the_scripted_numbers(local_ray, tmp_path):
    out = tmp_path / "eval"
    summary = run_evaluate(wizardlm_config(out, f"evolution.output={make_evolve_output(tmp_path / 'evolve')}",
                                          "evolution.difficulty_per_round=1"),
                           FACTORIES)
    agg = summary["aggregates"]
    # judged (both orders readable): 20 (3.5 vs 7.5), 38 (8.5/4.5), 71 (5.5/5.5), 84 (8.5/4.5); 56 has one
    # readable order only (9 vs 4) and is not counted; item 1 has no baseline
    assert agg["overall"]["ratio"] == pytest.approx(26 / 22)
    assert (agg["items"], agg["judged"], agg["answer_failures"], agg["unjudged"], agg["one_order_only"]) == \
        (6, 4, 1, 1, 1)
    assert [agg["overall"][k] for k in ("win", "tie", "loss")] == [2, 1, 1]
    assert agg["overall"]["win_rate"] == pytest.approx(2.5 / 4)
    assert {b: (g["n"], g["win"], g["tie"], g["loss"]) for b, g in agg["by_band"].items()} == \
        {"1-4": (1, 1, 0, 0), "5-7": (3, 1, 1, 1)}
    assert agg["by_category"]["Code Generation"]["ratio"] == pytest.approx(3.5 / 7.5)
    assert agg["categories_at_or_above"] == 3 and len(agg["by_category"]) == 4
    assert agg["verdicts"] == {"verdicts": 10, "failed": 1, "unreadable": 1, "failures": {"out_of_range": 1},
                              "retried": 3}
    assert agg["order"]["disagree"] == 1 and agg["order"]["both_orders"] == 4
    assert agg["order"]["mean_difference_by_order"] == {"cb": pytest.approx(2.0), "bc": pytest.approx(0.0)}
    assert summary["answers"] == {"candidate": {"reused": 0, "generated": 6, "failed": 0},
                                  "baseline": {"reused": 0, "generated": 6, "failed": 1}}
    assert {role: (s["answers"], s["cut"]) for role, s in agg["answers"].items()} == \
        {"candidate": (6, 0), "baseline": (5, 1)}
    low, high = agg["overall"]["ci"]
    assert low < 26 / 22 < high

    report = (out / "report.md").read_text()
    assert report.startswith("# Evaluation: echo-candidate vs scripted-baseline\n\nThe candidate scored **118.2%** "
                             "of the baseline's")
    sections = re.findall(r"^## (.+)$", report, re.MULTILINE)
    assert sections == ["Win / tie / loss by difficulty", "Per category", "Answers", "Judge reliability",
                        "Evolution analysis (the evolve job's output)", "Setup", "Files"]
    assert "| 5-7 | 3 | 1 | 1 | 1 | 50.0% | 100.0% |" in report and "| band | n |" in report
    assert "**3 of 4** categories" in report and "| Code Generation | 1 | 46.7% |" in report
    assert "| baseline | 5 | 1 | 0 |" in report  # answers cut by their token limit, per role
    assert "1 of the baseline's 5 answers were cut by answer_sampling.max_tokens (8 tokens)" in report
    assert "Items with one readable order only: 1, not counted" in report
    assert "10 verdicts asked" in report and "1 gave no usable scores (out_of_range: 1)" in report
    assert "| deepening | 2 | 1 | 0 | 66.7% |" in report
    assert summary["evolution"]["difficulty"] == [{"round": 0, "rated": 1, "failed": 0, "mean": 1.0},
                                                  {"round": 1, "rated": 1, "failed": 0, "mean": 3.0},
                                                  {"round": 2, "rated": 1, "failed": 0, "mean": 5.0}]
    assert "| 2 | 1 | 0 | 5.00 |" in report
    assert "Evolution cost" not in report  # that evolve output's summary has no cost: nothing to say
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    for name in ("per_category.png", "win_tie_loss_by_difficulty.png", "evolution.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert [r["id"] for r in items] == ["1", "20", "38", "56", "71", "84"]
    assert [r["baseline_finished"] for r in items] == [False, True, True, True, False, True]  # 1: failed
    assert items[1]["candidate_completion_tokens"] == 8 and items[3]["outcome"] is None
    assert pq.read_table(out / "quarantine.parquet").num_rows == 0
    assert items[2]["first_attempt_cb"] == "I like reply A." and items[2]["attempts_cb"] == 2
    assert items[0]["answer_error"] == "baseline: generation_failed:http_500"
    assert json.loads((out / "summary.json").read_text())["aggregates"]["overall"]["win"] == 2

    # A rerun with the same settings reuses every good answer (the failed one is asked again) and
    # every verdict (the unreadable one too: the same judge would write it again).
    again = run_evaluate(wizardlm_config(out), FACTORIES)
    assert again["answers"] == {"candidate": {"reused": 6, "generated": 0, "failed": 0},
                                "baseline": {"reused": 5, "generated": 1, "failed": 1}}
    assert summary["verdicts"] == {"reused": 0, "generated": 10, "failed": 1}
    assert again["verdicts"] == {"reused": 10, "generated": 0, "failed": 1}
    assert again["aggregates"]["overall"]["ratio"] == pytest.approx(26 / 22)
    assert not (out / "evolution.png").exists() and "Evolution analysis" not in (out / "report.md").read_text()
    assert not (out / "difficulty.parquet").exists()  # results of the earlier run do not linger


MY_TESTSET = [
    {"qid": "q1", "question": "Find the longest increasing subsequence.", "topic": "algorithms", "gold": "Use DP."},
    {"qid": "q2", "question": "Write a haiku about rain.", "topic": "poetry"},
    {"qid": "q3", "question": "Sort a list in Python.", "topic": "algorithms"},
    {"qid": "q4", "question": "", "topic": "poetry"},
    {"qid": "q5", "question": "Name three rivers.", "topic": "geography"},
    {"qid": "q6", "question": "Count to three.", "topic": 3.5},  # a bad category: dropped, the item kept
]


def test_own_test_set_through_a_field_mapping_reports_per_category_and_quarantine(local_ray, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MY_TESTSET))
    cfg = wizardlm_config(tmp_path / "eval", f"testset.path={path}", "testset.instruction_field=question",
                          "testset.id_field=qid", "testset.category_field=topic", "testset.difficulty_field=null",
                          "testset.reference_field=gold", "testset.per_category=null", "testset.limit=null")
    agg = run_evaluate(cfg, FACTORIES)["aggregates"]
    assert agg["overall"]["ratio"] == pytest.approx(37.5 / 25.5)
    assert {name: round(g["ratio"], 4) for name, g in agg["by_category"].items()} == \
        {"(no category)": round(8.5 / 4.5, 4), "algorithms": 1.0, "geography": round(8.5 / 4.5, 4),
         "poetry": round(8.5 / 4.5, 4)}  # an item without a category is counted too
    assert not agg["has_difficulty"] and agg["by_band"] == {}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "The test set has no difficulty field, so the difficulty views are left out." in report
    assert "| algorithms | 2 | 100.0% | 50.0% | 6.00 | 6.00 | 1/0/1 |" in report
    assert "| (no category) | 1 | 188.9% |" in report
    assert "**3 of 3** categories" in report
    assert f"Test set `{path}`: 6 rows read, 5 items evaluated, quarantined: empty_instruction: 1; fields dropped " \
           "(the row kept): category_not_text: 1." in report
    assert f"| q4 | {path}:4 | empty_instruction |" in report
    assert f"| q6 | {path}:6 | field dropped | category_not_text: category must be text, got float |" in report
    quarantine = pq.read_table(tmp_path / "eval" / "quarantine.parquet").to_pylist()
    assert [(r["id"], r["line"], r["error"]) for r in quarantine] == [("q4", 4, "empty_instruction")]
    assert json.loads(quarantine[0]["raw"]) == MY_TESTSET[3]
    assert (tmp_path / "eval" / "per_category.png").exists()
    assert not (tmp_path / "eval" / "win_tie_loss_by_difficulty.png").exists()
    items = pq.read_table(tmp_path / "eval" / "items.parquet").to_pylist()
    assert [(r["id"], r["category"], r["reference"]) for r in items] == \
        [("q1", "algorithms", "Use DP."), ("q2", "poetry", None), ("q3", "algorithms", None),
         ("q5", "geography", None), ("q6", None, None)]


def test_real_hf_engine_in_the_actors_with_a_tiny_llama_judge_that_cannot_score(local_ray, tiny_llama, tmp_path):
    """configs/evaluate_tiny.yaml with a tiny random Llama answering and judging through the hf backend:
    its verdicts are noise, so every one is retried once and then counted as a failure, never guessed."""
    cfg = load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        f"candidate.model={tiny_llama}", "judge.backend=hf", f"judge.model={tiny_llama}", "judge.dtype=float32",
        "judge.torch_threads=1", "judge.num_cpus=1", "judge.rows_per_call=8", f"output.path={tmp_path / 'eval'}"])
    summary = run_evaluate(cfg)
    agg = summary["aggregates"]
    assert summary["answers"]["candidate"] == {"reused": 0, "generated": 4, "failed": 0}
    verdicts = agg["verdicts"]
    assert (verdicts["verdicts"], verdicts["failed"], verdicts["retried"]) == (8, 8, 8)
    assert set(verdicts["failures"]) <= {"empty", "malformed"}  # what noise decodes to, never a score
    assert agg["overall"]["ratio"] is None and agg["judged"] == 0 and agg["unjudged"] == 4
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "No item could be judged, so there is no score ratio" in report
    assert "8 of 8 verdicts could not be read" in report
    items = pq.read_table(tmp_path / "eval" / "items.parquet").to_pylist()
    assert all(r["candidate_answer"] and r["attempts_cb"] == 2 == r["attempts_bc"] for r in items)
