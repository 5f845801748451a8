"""The judge's prompt budget: its instructions and the question are never cut; the answers are cut
alike when the whole does not fit, and the item row and the report say so."""
import sys

import cloudpickle
import pyarrow.parquet as pq
import pytest

from common.config import ConfigError, load_config
from eval.budget import CUT_NOTE, PROMPT_TOO_LONG, Measure, common_cap
from eval.config import EvaluateConfig
from eval.judge import JUDGE_TEMPLATE
from eval.pipeline import run_evaluate
from eval.rows import grade_rows, judge_rows
from generation.types import Generation

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fakes travel to Ray's actors by value

WORDS = Measure(limit=120, prompt_tokens=lambda text: len(text.split()), text_ids=lambda text: text.split(),
                decode=" ".join)  # a tokenizer of words, to count by hand
INSTRUCTIONS = len(JUDGE_TEMPLATE.format(question="", answer_a="", answer_b="", reference_block="").split())


def test_common_cap_cuts_the_longest_answers_first_to_one_length():
    assert common_cap(100, [30, 40]) == 40  # both fit whole
    assert common_cap(50, [10, 80]) == 40  # the short answer stays whole, the long one gets the rest
    assert common_cap(50, [60, 80]) == 25  # both cut to the same length
    assert common_cap(0, [5, 5]) == 0


def test_judge_prompts_keep_instructions_and_question_and_cut_both_answers_alike():
    items = [{"id": "a", "instruction": "Explain tides.", "reference": None},
             {"id": "b", "instruction": "Say hi.", "reference": None},
             {"id": "c", "instruction": "word " * 200, "reference": None}]
    cand = {i: {"answer": "cand " * 100, "error": None} for i in "abc"} | {"b": {"answer": "Hi!", "error": None}}
    base = {i: {"answer": "base " * 100, "error": None} for i in "abc"} | {"b": {"answer": "Hello.", "error": None}}
    rows, fits = judge_rows(items, cand, base, WORDS)
    assert [(r["id"], r["order"]) for r in rows] == [("a", "cb"), ("a", "bc"), ("b", "cb"), ("b", "bc")]
    note = len(CUT_NOTE.split())
    cap = (WORDS.limit - INSTRUCTIONS - 2 - 2 * note) // 2  # the question is 2 words
    assert fits == {"a": {"cut_to": cap}, "b": {"cut_to": None}, "c": {"error": PROMPT_TOO_LONG}}
    for row in rows[:2]:
        words = row["prompt"].split()
        assert len(words) <= WORDS.limit and row["prompt"].startswith(JUDGE_TEMPLATE[:60])
        assert "Explain tides." in row["prompt"] and row["prompt"].endswith("Reason: <one or two sentences>")
        assert words.count("cand") == words.count("base") == cap and row["prompt"].count(CUT_NOTE.strip()) == 2
    assert "Hi!" in rows[2]["prompt"] and CUT_NOTE.strip() not in rows[2]["prompt"]
    # single-answer grading: each answer alone, cut alone
    grades, grade_fits = grade_rows(items[:2], {"candidate": cand}, WORDS)
    assert [g["id"] for g in grades] == ["a", "b"] and grade_fits[("b", "candidate")] == {"cut_to": None}
    assert len(grades[0]["prompt"].split()) <= WORDS.limit and grade_fits[("a", "candidate")]["cut_to"] > cap


def test_a_config_whose_judge_cannot_hold_two_whole_answers_is_refused_with_the_numbers():
    with pytest.raises(ConfigError, match=r"judge.max_prompt_tokens: 2048 cannot hold the judge's instructions "
                                          r"\(~256 tokens\) and 2 answer\(s\) of answer_sampling.max_tokens=1024: "
                                          r"set it to at least 2304"):
        load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", ["judge.backend=hf",
                                                                    "answer_sampling.max_tokens=1024"])
    with pytest.raises(ConfigError, match="judge.vllm.max_model_len: 4096 cannot hold judge.max_prompt_tokens=4000"):
        load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
            "judge.backend=vllm", "judge.max_prompt_tokens=4000", "judge.vllm.max_model_len=4096",
            "judge_sampling.max_tokens=256"])


class LongAnswers:
    """Candidate and baseline: 300-word answers, whatever the token limit (two tokenizers differ)."""

    model_name = "long"

    def __init__(self, cfg=None):
        self.word = "alpha" if cfg is None or "cand" in cfg.model else "omega"

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    async def generate(self, prompt, sampling):
        return Generation(" ".join([self.word] * 300), prompt_tokens=5, completion_tokens=300, finished=True)

    async def close(self):
        pass


def recording_hf_judge(record: str):
    """The real hf backend as the judge; every prompt is written down as the engine gets it (its ids,
    after the engine's own cut to max_prompt_tokens, decoded)."""
    def build(cfg):
        from generation.hf import HFGenerator

        inner = HFGenerator(cfg)

        class Recording:
            model_name = inner.model_name

            def count_tokens(self, texts):
                return inner.count_tokens(texts)

            async def generate(self, prompt, sampling):
                ids = inner.prompt_ids(prompt)
                with open(record, "a") as out:
                    out.write(repr((len(ids), inner.tokenizer.decode(ids))) + "\n")
                return await inner.generate(prompt, sampling)

            async def close(self):
                await inner.close()

        return Recording()
    return build


def test_real_hf_judge_gets_its_instructions_and_the_question_when_answers_are_long(local_ray, tiny_llama, tmp_path):
    record = tmp_path / "prompts.txt"
    cfg = load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        "testset.limit=1", "candidate.backend=echo", "candidate.model=long-cand", "candidate.num_cpus=0.5",
        "baseline.model=long-base", "judge.backend=hf", f"judge.model={tiny_llama}", "judge.prompt_format=plain",
        "judge.dtype=float32", "judge.max_prompt_tokens=400", "judge.torch_threads=1", "judge.num_cpus=1",
        "answer_sampling.max_tokens=64", "judge_sampling.max_tokens=2", f"output.path={tmp_path / 'eval'}"])
    summary = run_evaluate(cfg, {"candidate": LongAnswers, "baseline": LongAnswers,
                                 "judge": recording_hf_judge(str(record))})
    sent = [eval(line) for line in record.read_text().splitlines()]  # noqa: S307 (our own repr)
    items = pq.read_table(tmp_path / "eval" / "items.parquet").to_pylist()
    assert len(sent) >= 2 and all(n <= 400 for n, _ in sent)  # both orders (and retries)
    for _, prompt in sent:  # today's cut from the front would start mid-answer
        assert prompt.startswith("You are reviewing two replies written by AI assistants")
        assert any(item["instruction"] in prompt for item in items)
        assert prompt.count("alpha") == prompt.count("omega") > 0 and prompt.count(CUT_NOTE.strip()) == 2
        assert "Reason: <one or two sentences>" in prompt and prompt.endswith("\n\n### Response:")
    cuts = [row["answers_cut_to"] for row in items]
    assert all(cut and cut < 300 for cut in cuts)
    assert summary["aggregates"]["judge_fit"] == {"cut": 1, "shortest_cut": cuts[0], "too_long": 0}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "1 judge prompts would not fit in `judge.max_prompt_tokens` (400): their answers were cut to one " \
           "common length" in report
