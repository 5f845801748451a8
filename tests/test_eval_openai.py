"""The evaluate job with its baseline and judge on the openai backend, against a local fake
OpenAI-compatible server that counts what it is asked: the baseline through /v1/chat/completions,
the judge through /v1/completions (plain prompt format); the judge's key is read on the driver
only. A rerun with the same settings asks the server nothing (answers, verdicts and difficulty
ratings are all reused); a verdict that failed as a request is asked again, and only it."""
import json
import re
from collections import Counter

import pytest

from common.config import load_config
from eval.config import EvaluateConfig
from eval.pipeline import run_evaluate
from tests.openai_fakes import FlakyOpenAIServer, completion_body, send_json
from tests.test_eval_evolution import make_evolve_output

JUDGE_KEY_ENV, JUDGE_KEY = "EVOLRAY_TEST_JUDGE_KEY", "sk-judge-only-on-the-driver"
COST = {"accelerator_seconds": 250.0, "reserved_accelerator_seconds": 400.0, "per_kept_instruction": 50.0,
        "price_per_accelerator_hour": 3.6, "money": 0.25,
        "per_round": [{"round": 1, "accelerator_seconds": 150.0, "kept": 2, "per_kept": 75.0},
                      {"round": 2, "accelerator_seconds": 100.0, "kept": 1, "per_kept": 100.0}]}


class JudgeServer(FlakyOpenAIServer):
    """Baseline answers, well-formed verdicts (candidate 8, baseline 6 in either order) and
    difficulty ratings; a verdict whose prompt holds `fail_on` gets a 500."""

    def __init__(self):
        super().__init__()
        self.asked: Counter = Counter()  # kind of request -> requests received
        self.keys: dict[str, set] = {}  # kind of request -> Authorization headers seen
        self.fail_on: str | None = None

    def handle(self, request, body: dict) -> None:
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        kind = "verdict" if "[Reply A]" in prompt else "rating" if "Rate how hard" in prompt else "answer"
        with self.lock:
            self.asked[kind] += 1
            self.keys.setdefault(kind, set()).add(request.headers.get("Authorization", ""))
        if kind == "verdict" and self.fail_on and self.fail_on in prompt:
            return send_json(request, 500, {"error": {"message": "judge overloaded", "type": "server_error"}})
        if kind == "verdict":
            candidate_first = re.search(r"\[Reply A\]\n(.*?)\n\n\[Reply B\]", prompt, re.DOTALL).group(1) \
                .startswith("Canned answer")
            text = "Score A: 8\nScore B: 6\nReason: A is fuller." if candidate_first else \
                "**Score A:** 6\n**Score B:** 8/10\nReason: B is fuller."
        elif kind == "rating":
            text = "Difficulty: 4"
        else:
            text = "A baseline reply."
        for prefill in ("Score A:", "Difficulty:"):  # judge_prefill: the reply was started for us
            if prompt.endswith(f"### Response:\n{prefill}"):
                text = text.removeprefix(prefill).removeprefix("**Score A:**")
        send_json(request, 200, completion_body(body, text))


@pytest.fixture
def server():
    fake = JudgeServer()
    yield fake
    fake.close()


def config(server, out, evolve, *overrides):
    return load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        "candidate.backend=echo", "candidate.model=echo", "candidate.num_cpus=0.5",
        "baseline.backend=openai", "baseline.model=fake-baseline", "baseline.prompt_format=chat",
        f"baseline.openai.base_url={server.url}", "baseline.openai.max_retries=0",
        "judge.backend=openai", "judge.model=fake-judge", "judge.prompt_format=plain",
        f"judge.openai.base_url={server.url}", f"judge.openai.api_key_env={JUDGE_KEY_ENV}",
        "judge.openai.max_retries=0", f"evolution.output={evolve}", "evolution.difficulty_per_round=1",
        f"output.path={out}", "report.bootstrap_samples=100", *overrides])


def test_baseline_and_judge_on_an_endpoint_and_a_rerun_asks_nothing_again(local_ray, server, tmp_path, monkeypatch):
    monkeypatch.setenv(JUDGE_KEY_ENV, JUDGE_KEY)  # after Ray started: the actors' environment lacks it
    evolve = make_evolve_output(tmp_path / "evolve")
    (tmp_path / "evolve" / "summary.json").write_text(json.dumps({"rounds": 2, "cost": COST}))
    out = tmp_path / "eval"
    server.fail_on = "120 miles"  # the first item: both its verdicts fail as requests

    first = run_evaluate(config(server, out, evolve))
    assert server.asked == {"answer": 4, "verdict": 8, "rating": 3}
    assert server.keys["verdict"] == server.keys["rating"] == {f"Bearer {JUDGE_KEY}"}
    assert server.keys["answer"] == {"Bearer EMPTY"}  # a self-hosted endpoint without a key
    agg = first["aggregates"]
    assert (agg["judged"], agg["unjudged"]) == (3, 1)
    assert agg["verdicts"]["failures"] == {"generation_failed:http_500": 2}
    assert agg["overall"]["ratio"] == pytest.approx(8 / 6) and agg["overall"]["win"] == 3
    assert first["verdicts"] == {"reused": 0, "generated": 8, "failed": 2}
    assert (agg["verdicts"]["failed"], agg["verdicts"]["unreadable"]) == (2, 0)
    report = (out / "report.md").read_text()
    assert "| baseline | fake-baseline | openai | chat |" in report
    assert "| judge | fake-judge | openai | plain |" in report
    assert "Evolution cost: **250.0 accelerator-seconds** of generation (400.0 reserved by the actors), 50.0 per " \
           "kept evolved instruction; at 3.6 per accelerator-hour that is **0.25** in all." in report
    assert "| 1 | 150.0 | 2 | 75.0 |\n| 2 | 100.0 | 1 | 100.0 |\n| all (kept: evolved) | 250.0 | 3 | 50.0 |" in report
    assert "2 verdict requests failed (server errors, timeouts): those items are not scored; a rerun asks only " \
           "them again." in report and "could not be read" not in report
    assert JUDGE_KEY not in report + (out / "summary.json").read_text() + (out / "config.yaml").read_text()

    server.fail_on = None  # a rerun with the same settings asks again only the two failed verdicts
    second = run_evaluate(config(server, out, evolve))
    assert server.asked == {"answer": 4, "verdict": 10, "rating": 3}
    assert second["answers"]["baseline"] == {"reused": 4, "generated": 0, "failed": 0}
    assert second["verdicts"] == {"reused": 6, "generated": 2, "failed": 0}
    assert second["evolution"]["ratings"] == {"reused": 3, "generated": 0, "failed": 0}
    assert second["aggregates"]["judged"] == 4 and second["aggregates"]["overall"]["ratio"] == pytest.approx(8 / 6)

    third = run_evaluate(config(server, out, evolve))  # nothing new: the server is not asked at all
    assert server.asked == {"answer": 4, "verdict": 10, "rating": 3}
    assert third["verdicts"] == {"reused": 8, "generated": 0, "failed": 0}
    assert third["aggregates"] == second["aggregates"]
    assert "verdicts 8 reused, 0 generated" in (out / "report.md").read_text()

    run_evaluate(config(server, out, evolve, "judge_sampling.max_tokens=24"))  # new judge settings: new verdicts
    assert server.asked == {"answer": 4, "verdict": 18, "rating": 3}

    prefilled = run_evaluate(config(server, out, evolve, "judge_prefill=true"))  # replies started for the judge
    assert server.asked == {"answer": 4, "verdict": 26, "rating": 6}
    assert prefilled["aggregates"]["overall"]["ratio"] == pytest.approx(8 / 6)
    assert prefilled["aggregates"]["verdicts"]["failed"] == 0
    assert [r["mean"] for r in prefilled["evolution"]["difficulty"]] == [4.0, 4.0, 4.0]
    assert "Every verdict was started with `Score A:`" in (out / "report.md").read_text()
