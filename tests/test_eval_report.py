"""The report from a hand-made summary: its words and numbers, and report.html in a real headless
Chromium (the Debian package, installed by `make setup`): it renders with its headline, every image
loads, no console errors, and a screenshot. With CI set, a missing Chromium fails the test."""
import json
import os
import re
import shutil
import subprocess

import pytest

from eval.aggregate import aggregate
from eval.evolution import evolution_stats, read_evolution_records
from eval.evolution_report import cost_blocks
from eval.pipeline import display_name
from eval.report import caveats, write_report
from eval.sections import verdict_words
from tests.test_eval_aggregate import TABLE, item
from tests.test_eval_evolution import make_evolve_output

MODELS = {"candidate": {"model": "/home/me/evolray/outputs/train-local/model", "name": "outputs/train-local/model",
                        "backend": "hf", "prompt_format": "wizardlm"},
          "baseline": {"model": "smollm2-135m-instruct", "name": "smollm2-135m-instruct", "backend": "hf",
                       "prompt_format": "chat"},
          "judge": {"model": "smollm2-135m-instruct", "name": "smollm2-135m-instruct", "backend": "hf",
                    "prompt_format": "chat"}}


def summary_of(rows, evolution=None, note="A 135M judge is a smoke test, not a measurement.", testset=None):
    agg = aggregate(rows, bootstrap_samples=200)
    return {"mode": "pairwise", "models": MODELS, "aggregates": agg, "evolution": evolution,
            "notes": [note] + caveats(agg, MODELS), "judge_max_prompt_tokens": 2048,
            "sampling": {"answers": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 128},
                         "judge": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64}},
            "testset": testset or {"path": "bundled:wizardlm_testset.jsonl", "rows": 218, "used": 7,
                                   "quarantined": {}},
            "answers": {"candidate": {"reused": 0, "generated": 7, "failed": 0},
                        "baseline": {"reused": 7, "generated": 0, "failed": 1}}}


def agg_with(low, high):
    return {"overall": {"ratio": (low + high) / 2, "ci": (low, high), "n": 40}, "confidence": 0.95, "items": 50}


def test_headline_reads_the_interval_in_plain_words():
    assert verdict_words(agg_with(1.05, 1.2)).endswith("on this test set the candidate is better than the baseline.")
    assert verdict_words(agg_with(0.7, 0.95)).endswith("on this test set the candidate is worse than the baseline.")
    assert verdict_words(agg_with(0.9, 1.1)).endswith("on this test set the two models cannot be told apart.")
    assert "**100.0%** of the baseline's total score (95% interval 90.0% to 110.0%; 40 of 50 items judged" in \
        verdict_words(agg_with(0.9, 1.1))


def test_headline_says_how_many_items_one_order_alone_judged():
    rows = [item(str(i), (8, 6), None if i < 2 else (7, 7), "c", 3) for i in range(5)]
    assert "5 of 5 items judged, 3 of them in both orders, 2 in one (judge.require_both_orders: false))" in \
        verdict_words(aggregate(rows, bootstrap_samples=10, require_both_orders=False))
    assert "3 of 5 items judged, each in both orders)" in verdict_words(aggregate(rows, bootstrap_samples=10))


def test_caveats_say_plainly_what_limits_the_result():
    notes = caveats(aggregate(TABLE, bootstrap_samples=10), MODELS)
    assert notes == [
        "The judge (smollm2-135m-instruct) is also one of the models evaluated; judges tend to prefer their "
        "own answers.",
        "Only 4 items were judged: the interval is wide and per-category numbers rest on one or two items each.",
        "3 of 12 verdicts could not be read: the judge often does not follow the scoring format.",
        "1 items had a readable verdict in one order only and are not counted (`judge.require_both_orders`)."]
    empty = [item("e", (1, 6), (6, 1), candidate_answer="", baseline_answer="Hi.", candidate_finished=True),
             item("f", None, None, candidate_answer="Cut here", baseline_answer="Hi.", candidate_finished=False)]
    assert caveats(aggregate(empty, bootstrap_samples=10), MODELS | {"judge": {"model": "gpt-4"}}, 96)[1:3] == [
        "The candidate's answer was empty for 1 of 2 items (the model ended its reply at once); the judge scored "
        "those empty answers as they are.",
        "1 of the candidate's 2 answers were cut by answer_sampling.max_tokens (96 tokens): the judge saw them "
        "unfinished."]
    many = [item(str(i), (8, 2), (2, 8)) for i in range(40)]  # each order picks the first answer: pure bias
    assert caveats(aggregate(many, bootstrap_samples=10), MODELS | {"judge": {"model": "gpt-4"}}) == [
        "The judge changed its winner when the answers were swapped for 100.0% of items: its verdicts depend "
        "strongly on position."]


def test_headline_and_caveats_come_first(tmp_path):
    write_report(summary_of(TABLE), str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    before_sections = report.split("\n## ")[0]
    assert before_sections.startswith("# Evaluation: outputs/train-local/model vs smollm2-135m-instruct\n")
    assert "**96.0%** of the baseline's total score" in before_sections
    assert "Win rate **50.0%** ± 20.4% (ties count half; ± one standard error): wins 1, ties 2, losses 1" \
        in before_sections and "Length-controlled win rate **50.0%**" in before_sections
    assert "**1 of 2** categories" in before_sections
    assert "> **Note:** A 135M judge is a smoke test, not a measurement." in before_sections
    assert "Judged difficulty per round" not in report  # no evolution output given
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["per_category.png", "win_tie_loss_by_difficulty.png"]


def test_a_run_where_nothing_was_judged_says_so_once_without_empty_tables(tmp_path):
    write_report(summary_of([item("a", None, None, "Math", 3), item("b", None, None, "Code", 9)]),
                 str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "No item could be judged, so there is no score ratio" in report and "Wins" not in report
    assert report.count("No item was judged.") == 2 and "no category field" not in report
    assert "| all | 0 |" not in report and list(tmp_path.glob("*.png")) == []


def test_evolve_cost_shows_per_round_and_in_all_and_money_only_with_a_price():
    cost = {"accelerator_seconds": 3765.25, "reserved_accelerator_seconds": None, "per_kept_instruction": 94.13,
            "price_per_accelerator_hour": None, "money": None,
            "per_round": [{"round": 0, "accelerator_seconds": 40.0, "kept": 16, "per_kept": 2.5},
                          {"round": 1, "accelerator_seconds": 2000.0, "kept": 25, "per_kept": 80.0},
                          {"round": 2, "accelerator_seconds": 1725.25, "kept": 15, "per_kept": 115.02},
                          {"round": 3, "accelerator_seconds": 0.0, "kept": 0, "per_kept": None}]}
    (_, text), (_, header, rows) = cost_blocks(cost)
    assert text == "Evolution cost: **3,765.2 accelerator-seconds** of generation, 94.1 per kept evolved instruction."
    assert rows == [["0 (seed answers)", "40.0", 16, "2.5"], [1, "2,000.0", 25, "80.0"], [2, "1,725.2", 15, "115.0"],
                    [3, "0.0", 0, "n/a"], ["all (kept: evolved)", "3,765.2", 40, "94.1"]]
    priced = cost | {"reserved_accelerator_seconds": 7200.0, "price_per_accelerator_hour": 2.5, "money": 2.615}
    assert cost_blocks(priced)[0][1].endswith("(7,200.0 reserved by the actors), 94.1 per kept evolved instruction; "
                                              "at 2.5 per accelerator-hour that is **2.615** in all.")
    assert cost_blocks(None) == [] and cost_blocks({}) == []


PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
const consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({images: [...document.images].map(i => [i.complete, i.naturalWidth,
    i.naturalHeight]), errors: window.__errors, title: document.title,
    headline: document.querySelector("h1 + p").textContent});
  document.body.appendChild(pre);
});
</script>"""

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]


def test_report_html_renders_in_headless_chromium_with_every_image(tmp_path):
    if CHROMIUM is None:  # `make setup` installs it; in CI a missing browser is a failure, never a skip
        if os.environ.get("CI"):
            pytest.fail("CI is set and no Chromium was found: `make setup` installs Debian's chromium")
        pytest.skip("no Chromium on this machine (make setup installs it: apt-get install chromium)")
    out = tmp_path / "eval"
    write_report(summary_of(TABLE, evolution_stats(read_evolution_records(make_evolve_output(tmp_path / "evo")))),
                 str(out))
    html = (out / "report.html").read_text()
    assert "<script" not in html and "http" not in html  # self-contained: nothing to fetch
    probed = tmp_path / "probed.html"  # the same page plus an observer that writes what it saw into the DOM
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", probed.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    seen = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL).group(1).replace("&quot;", '"'))
    assert seen["title"] == "Evaluation: outputs/train-local/model vs smollm2-135m-instruct"
    assert seen["headline"].startswith("The candidate scored 96.0% of the baseline's total score")
    assert len(seen["images"]) == 3
    assert all(complete and width > 0 and height > 0 for complete, width, height in seen["images"])
    assert seen["errors"] == []
    screenshot = out / "report_screenshot.png"
    subprocess.run([CHROMIUM, *FLAGS, "--window-size=1000,2400", f"--screenshot={screenshot}",
                    (out / "report.html").as_uri()], capture_output=True, timeout=120, check=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000


def test_a_local_model_is_named_by_its_path_under_the_working_folder_not_an_absolute_path(tmp_path, monkeypatch):
    model = tmp_path / "outputs" / "pipeline-local" / "model"
    model.mkdir(parents=True)
    assert display_name(str(model)) == "pipeline-local/model"  # outside the working folder: its last two parts
    monkeypatch.chdir(tmp_path)
    assert display_name(str(model)) == "outputs/pipeline-local/model"
    assert display_name("s3://bucket/models/m") == "s3://bucket/models/m" and display_name("gpt-4o") == "gpt-4o"
