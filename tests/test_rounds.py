"""The evolve chains on a scripted generator: every path of the paper's rules, without Ray."""
import asyncio

import pytest

from evol import elimination as rules
from evol.config import EvolveSettings
from evol.records import ELIMINATED, ERROR, KEPT, QUARANTINED, in_training_set, records_table
from evol.rounds import Roles, evolve_rows
from evol.seeds import SeedFields, TOO_MANY_TOKENS, mark_duplicates, parse_jsonl
from evol.summary import SummaryBuilder, format_summary
from evol.templates import ORIGINAL_MARKER
from generation.types import Generation, GenerationError


class ScriptedGenerator:
    """Behaviour keyed on words in the instruction, so outcomes follow an instruction's lineage."""

    model_name = "scripted"

    def __init__(self):
        self.calls: list[str] = []

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    async def generate(self, prompt, sampling):
        self.calls.append(prompt)
        if "FAIL" in prompt and ORIGINAL_MARKER not in prompt:  # answering a FAIL instruction fails for good
            raise GenerationError("http_500", "server error after retries")
        return Generation(self._answer(prompt), prompt_tokens=len(prompt.split()), completion_tokens=3,
                          finished=self._finished(prompt), engine_seconds=0.5)

    @staticmethod
    def _finished(prompt: str) -> bool:
        """CUT: the rewrite hits max_tokens; LONG: the answer does; HALF: the verdict does."""
        if ORIGINAL_MARKER in prompt:
            return "CUT" not in prompt.split(ORIGINAL_MARKER)[1]
        if "First instruction:" in prompt:
            return "HALF" not in prompt
        return "LONG" not in prompt

    def _answer(self, prompt: str) -> str:
        if ORIGINAL_MARKER in prompt:  # an evolve request: the instruction follows the marker
            instruction = prompt.split(ORIGINAL_MARKER)[1].split("\n\n#")[0].strip()
            if "LEAK" in instruction:
                return "#Rewritten Instruction# " + instruction
            if "COPY" in instruction:
                return instruction
            return f'"{instruction} Explain why."'
        if "First instruction:" in prompt:
            return "Equal" if "SAME" in prompt or "HALF" in prompt else "Not Equal"
        if "SORRY" in prompt:
            return "Sorry, I cannot."
        if "STOP" in prompt:
            return "and the of it."
        return "A real and useful answer."


FIELDS = SeedFields("instruction", "input", "output", "id")


def _seeds(*objs) -> list[dict]:
    import json
    return mark_duplicates(parse_jsonl("\n".join(json.dumps(o) for o in objs).encode(), "s.jsonl", FIELDS))


def evolve(seeds, gen, rounds=2, max_tokens=50, **settings):
    return asyncio.run(evolve_rows(seeds, Roles(gen, gen), EvolveSettings(rounds=rounds, **settings), max_tokens))


def _run(seeds, rounds=2, max_tokens=50, **settings):
    gen = ScriptedGenerator()
    records = evolve(seeds, gen, rounds, max_tokens, **settings)
    records_table(records)  # schema holds
    return records, gen


def test_counts_lineage_and_reasons():
    seeds = _seeds({"id": "ok", "instruction": "Name rivers", "output": "Nile"},
                   {"id": "leak", "instruction": "LEAK this"},
                   {"id": "copy", "instruction": "COPY this", "output": "x"},
                   {"id": "sorry", "instruction": "SORRY this", "output": "x"},
                   {"id": "stop", "instruction": "STOP this", "output": "x"},
                   {"id": "same", "instruction": "SAME this", "output": "x"},
                   {"id": "bad", "instruction": ""},
                   {"id": "long", "instruction": " ".join(["w"] * 60)})
    records, gen = _run(seeds)
    by_round = {r: [x for x in records if x["round"] == r] for r in (0, 1, 2)}
    # round 0: one record per seed row; 6 used, 2 quarantined with reasons
    assert len(by_round[0]) == 8
    quarantined = {(x["id"], x["root_id"], x["reason"]) for x in by_round[0] if x["status"] == QUARANTINED}
    assert quarantined == {("quarantined:s.jsonl:7", "quarantined:s.jsonl:7", "empty_instruction"),
                           ("quarantined:s.jsonl:8", "quarantined:s.jsonl:8", TOO_MANY_TOKENS)}
    # each round evolves every pool item once: 6 candidates per round
    assert len(by_round[1]) == len(by_round[2]) == 6
    reasons = {x["root_id"]: x["reason"] for x in by_round[1]}
    assert reasons == {"ok": None, "leak": rules.TEMPLATE_LEAK, "copy": rules.NO_INFORMATION_GAIN,
                       "sorry": rules.COULD_NOT_ANSWER, "stop": rules.TRIVIAL_RESPONSE,
                       "same": rules.NO_INFORMATION_GAIN}
    for x in by_round[1] + by_round[2]:
        assert x["status"] == (KEPT if x["reason"] is None else ELIMINATED)
    # lineage: the kept chain goes seed -> r1 -> r2; failed ones restart from the seed
    r1 = {x["root_id"]: x for x in by_round[1]}
    r2 = {x["root_id"]: x for x in by_round[2]}
    assert r1["ok"]["parent_id"] == "ok" and r2["ok"]["parent_id"] == r1["ok"]["id"]
    assert r2["ok"]["instruction"] == "Name rivers Explain why. Explain why."
    assert r2["leak"]["parent_id"] == "leak" and r2["leak"]["op"] != "" and r2["leak"]["id"] != r1["leak"]["id"]
    # ids are unique across the whole output
    assert len({x["id"] for x in records}) == len(records)


def test_no_model_call_is_made_for_work_already_lost():
    records, _ = _run(_seeds({"id": "leak", "instruction": "LEAK", "output": "x"}), rounds=1)
    cand = [x for x in records if x["round"] == 1][0]
    assert cand["requests"] == 1 and cand["response"] is None and cand["equality"] == rules.SKIPPED
    records, _ = _run(_seeds({"id": "sorry", "instruction": "SORRY", "output": "x"}), rounds=1)
    cand = [x for x in records if x["round"] == 1][0]
    # the equality check was asked with the answer (both in flight at once) and is paid for, but rule 2
    # comes first: the record says skipped
    assert cand["requests"] == 3 and cand["response"] == "Sorry, I cannot." and cand["equality"] == rules.SKIPPED
    records, _ = _run(_seeds({"id": "ok", "instruction": "fine", "output": "x"}), rounds=1)
    cand = [x for x in records if x["round"] == 1][0]
    assert cand["requests"] == 3 and cand["equality"] == rules.NOT_EQUAL and cand["generated_tokens"] == 9
    assert cand["gen_seconds"] == 1.5  # the engine-time shares of its three requests
    assert cand["equality_answer"] == "Not Equal"


class SlowScriptedGenerator(ScriptedGenerator):
    """Each request takes a while; counts the requests in flight at once."""

    def __init__(self):
        super().__init__()
        self.in_flight = self.peak = self.asked = 0

    async def generate(self, prompt, sampling):
        self.asked += 1  # answered or cancelled
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            return await super().generate(prompt, sampling)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("ahead", [False, True])
def test_a_chain_asks_for_its_answer_and_its_equality_check_at_once(ahead):
    """One chain keeps a request in the engine's queue while its check is judged: asked one after the
    other, every chain waiting for its check left a row of the engine's batch empty. With rounds_ahead
    the next round's rewrite goes with them: three requests of one chain at once."""
    gen = SlowScriptedGenerator()
    records = evolve(_seeds({"id": "ok", "instruction": "fine", "output": "x"}), gen, rounds=2, rounds_ahead=20 if ahead else 0)
    assert gen.peak == (3 if ahead else 2)
    candidates = [x for x in records if x["round"] > 0]
    assert [x["status"] for x in candidates] == [KEPT, KEPT] and all(x["requests"] == 3 for x in candidates)
    assert all(x["equality"] == rules.NOT_EQUAL and x["response"] == "A real and useful answer." for x in candidates)


def test_seeds_without_response_get_one_generated():
    records, _ = _run(_seeds({"id": "a", "instruction": "Name rivers"},
                             {"id": "b", "instruction": "Add", "input": "1, 2", "output": "3"}), rounds=1)
    seeds = {x["id"]: x for x in records if x["round"] == 0}
    assert seeds["a"]["response"] == "A real and useful answer." and seeds["a"]["requests"] == 1
    assert seeds["b"]["response"] == "3" and seeds["b"]["requests"] == 0 and seeds["b"]["response_tokens"] == 1
    # context is part of what gets evolved
    cand = [x for x in records if x["round"] == 1 and x["root_id"] == "b"][0]
    assert cand["instruction"].startswith("Add\n\n1, 2")


def test_summary_counts_add_up():
    seeds = _seeds({"id": "ok", "instruction": "Name rivers", "output": "x"},
                   {"id": "sorry", "instruction": "SORRY", "output": "x"}, {"id": "bad", "instruction": 3})
    records, _ = _run(seeds, rounds=3, rounds_ahead=0)
    builder = SummaryBuilder()
    builder.add_rows(records)
    summary = builder.build(wall_seconds=2.0)
    assert summary["seeds"] == {"read": 3, "used": 2, "quarantined": 1, "errors": 0, "errors_by_reason": {},
                                "quarantined_by_reason": {"instruction_not_string": 1}, "responses_generated": 0,
                                "responses_rejected": {}}
    assert summary["candidates"] == 6 == summary["kept"] + summary["eliminated"]
    assert summary["kept"] == 3 and summary["training_rows"] == 5
    assert [r["pass_rate"] for r in summary["rounds"]] == [0.5, 0.5, 0.5]
    assert summary["rounds"][0]["eliminated_by_rule"] == {rules.COULD_NOT_ANSWER: 1}
    # per round: 3 for the kept chain, 3 for the sorry one (its check is asked with its answer)
    assert summary["requests"] == sum(x["requests"] or 0 for x in records) == 3 * (3 + 3)
    # numpy batches carry nulls as NaN: the same rows as columns give the same summary
    import numpy as np
    batch = {name: np.array([float("nan") if (x[name] is None and name in ("requests", "gen_seconds",
             "generated_tokens", "prompt_tokens", "instruction_tokens", "response_tokens")) else x[name]
             for x in records], dtype=object) for name in records[0]}
    from_batch = SummaryBuilder()
    from_batch.add_batch(batch)
    assert from_batch.build(wall_seconds=2.0) == summary


def test_a_batch_of_only_bad_seeds_makes_no_model_call():
    records, gen = _run(_seeds({"id": "a", "instruction": ""}, {"id": "b", "instruction": 5}), rounds=3)
    assert [x["status"] for x in records] == ["quarantined", "quarantined"]
    assert gen.calls == []


def test_a_failed_request_ends_its_chain_as_an_error_record_and_others_go_on():
    seeds = _seeds({"id": "ok", "instruction": "Name rivers", "output": "x"},
                   {"id": "fail", "instruction": "FAIL here", "output": "x"},
                   {"id": "fail0", "instruction": "FAIL without answer"})
    records, _ = _run(seeds, rounds=3, rounds_ahead=0)
    by_root = {}
    for x in records:
        by_root.setdefault(x["root_id"], []).append(x)
    assert [x["status"] for x in by_root["ok"]] == [KEPT] * 4
    # round 1 evolves "FAIL here", then answering it fails: an error record, and the chain stops there
    assert [(x["round"], x["status"]) for x in by_root["fail"]] == [(0, KEPT), (1, ERROR)]
    error = by_root["fail"][1]
    assert error["reason"] == "http_500" and error["detail"] == "server error after retries"
    assert error["instruction"] == "FAIL here Explain why." and error["requests"] == 3  # the check went with it
    # a seed whose own answer cannot be generated is a round-0 error, never evolved
    assert [(x["round"], x["status"], x["reason"]) for x in by_root["fail0"]] == [(0, ERROR, "http_500")]
    builder = SummaryBuilder()
    builder.add_rows(records)
    summary = builder.build(wall_seconds=1.0)
    assert summary["seeds"]["read"] == 3 and summary["seeds"]["used"] == 2 and summary["seeds"]["errors"] == 1
    assert summary["candidates"] == 4 == summary["kept"] + summary["eliminated"] + summary["errors"]
    assert summary["errors"] == 1 and summary["rounds"][0]["errors_by_reason"] == {"http_500": 1}


class InterleavingGenerator(ScriptedGenerator):
    """Answers after a delay that depends on the request, recording what is in flight at each start."""

    def __init__(self):
        super().__init__()
        self.in_flight: set[tuple[str, str]] = set()
        self.overlaps: list[set[tuple[str, str]]] = []

    async def generate(self, prompt, sampling):
        kind = "evolve" if ORIGINAL_MARKER in prompt else "judge" if "First instruction:" in prompt else "respond"
        depth = prompt.count("Explain why.")  # each kept round appends one: how far this chain has come
        key = (prompt.split("seed-")[1][:2] if "seed-" in prompt else "?", kind, depth)
        self.in_flight.add(key)
        self.overlaps.append(set(self.in_flight))
        await asyncio.sleep(0.001 * (1 + len(prompt) % 7))
        self.in_flight.discard(key)
        return await super().generate(prompt, sampling)


def test_chains_of_different_seeds_and_rounds_are_in_flight_together():
    gen = InterleavingGenerator()
    seeds = _seeds(*({"id": f"s{i}", "instruction": f"seed-{i:02d} task " + "word " * i, "output": "x"}
                     for i in range(12)))
    records = evolve(seeds, gen, rounds=3)
    assert len(records) == 12 * 4
    most = max(gen.overlaps, key=len)
    assert len({seed for seed, _, _ in most}) >= 6  # many seeds' requests at once, not one batch step at a time
    # at some moment one seed is being evolved while another's answer is running, and chains at
    # different rounds have requests in flight together: no barrier per step or per round
    assert any({kind for _, kind, _ in moment} >= {"evolve", "respond"} for moment in gen.overlaps)
    assert any(len({depth for _, _, depth in moment}) >= 2 for moment in gen.overlaps)
    rounds_of_seed = {}
    for x in records:
        rounds_of_seed.setdefault(x["root_id"], []).append(x["round"])
    assert all(r == [0, 1, 2, 3] for r in rounds_of_seed.values())


def _by_root(records) -> dict[str, list[dict]]:
    chains: dict[str, list[dict]] = {}
    for x in records:
        chains.setdefault(x["root_id"], []).append(x)
    return chains


def test_a_truncated_rewrite_is_eliminated_and_its_parent_evolves_again():
    records, _ = _run(_seeds({"id": "cut", "instruction": "CUT this", "output": "x"}), rounds=2)
    assert [(x["round"], x["status"], x["reason"], x["parent_id"]) for x in records] == [
        (0, KEPT, None, None), (1, ELIMINATED, rules.TRUNCATED_EVOLUTION, "cut"),
        (2, ELIMINATED, rules.TRUNCATED_EVOLUTION, "cut")]
    assert [x["requests"] for x in records] == [0, 1, 1]  # no answer, no verdict for a cut rewrite
    assert [r["eliminated_by_rule"] for r in _summary(records)["rounds"]] == [{rules.TRUNCATED_EVOLUTION: 1}] * 2


def test_a_verdict_cut_by_its_token_limit_is_unparsed_and_never_eliminates():
    records, _ = _run(_seeds({"id": "half", "instruction": "HALF this", "output": "x"}), rounds=1)
    candidate = records[1]
    assert (candidate["equality"], candidate["equality_answer"], candidate["status"]) == (
        rules.UNPARSED, "Equal", KEPT)
    summary = _summary(records)
    assert summary["rounds"][0]["equality_verdicts"] == {rules.UNPARSED: 1}
    assert summary["rounds"][0]["equality_unparsed_share"] == 1.0


def _summary(records, train_on_truncated=False) -> dict:
    builder = SummaryBuilder(train_on_truncated)
    builder.add_rows(records)
    return builder.build(wall_seconds=1.0)


def test_a_failing_generated_seed_answer_is_recorded_kept_out_of_training_and_the_seed_still_evolves():
    seeds = _seeds({"id": "sorry", "instruction": "SORRY this"}, {"id": "stop", "instruction": "STOP this"},
                   {"id": "ok", "instruction": "Name rivers"}, {"id": "given", "instruction": "SORRY", "output": "Sorry."})
    records, _ = _run(seeds, rounds=1)
    seed_rows = {x["id"]: x for x in records if x["round"] == 0}
    assert {k: (x["status"], x["reason"], x["response_reason"]) for k, x in seed_rows.items()} == {
        "sorry": (KEPT, None, rules.COULD_NOT_ANSWER), "stop": (KEPT, None, rules.TRIVIAL_RESPONSE),
        "ok": (KEPT, None, None), "given": (KEPT, None, None)}  # the seed file's own answer is not judged
    assert {k: in_training_set(x, False) for k, x in seed_rows.items()} == {
        "sorry": False, "stop": False, "ok": True, "given": True}
    candidates = {x["root_id"]: x["parent_id"] for x in records if x["round"] == 1}
    assert candidates == {"sorry": "sorry", "stop": "stop", "ok": "ok", "given": "given"}
    summary = _summary(records)
    assert summary["seeds"]["used"] == 4 and summary["seeds"]["responses_generated"] == 3
    assert summary["seeds"]["responses_rejected"] == {rules.COULD_NOT_ANSWER: 1, rules.TRIVIAL_RESPONSE: 1}
    kept_candidates = [x for x in records if x["round"] == 1 and x["status"] == KEPT]
    assert [x["root_id"] for x in kept_candidates] == ["ok"]
    assert summary["training_rows"] == 2 + 1  # ok + given + ok's candidate


def test_cut_responses_are_flagged_counted_and_out_of_training_unless_allowed():
    seeds = _seeds({"id": "long", "instruction": "LONG question"}, {"id": "ok", "instruction": "Name rivers"})
    records, _ = _run(seeds, rounds=2)
    flags = {(x["root_id"], x["round"]): (x["status"], x["response_truncated"]) for x in records}
    assert flags == {("long", 0): (KEPT, True), ("long", 1): (KEPT, True), ("long", 2): (KEPT, True),
                     ("ok", 0): (KEPT, False), ("ok", 1): (KEPT, False), ("ok", 2): (KEPT, False)}
    summary = _summary(records)
    assert summary["training_rows"] == 3 == sum(in_training_set(x, False) for x in records)
    assert summary["responses_truncated"] == {"kept_rows": 6, "truncated": 3, "share": 0.5,
                                              "in_training_set": False}
    assert [r["kept_responses_truncated"] for r in summary["rounds"]] == [1, 1]
    allowed = _summary(records, train_on_truncated=True)
    assert allowed["training_rows"] == 6 and allowed["responses_truncated"]["in_training_set"] is True
    assert ("responses cut by max_tokens: 3/6 kept rows (50%), kept out of the training set; "
            "generated seed answers rejected: 0") in format_summary(summary).splitlines()


def test_a_quarantined_duplicate_has_a_lineage_of_its_own():
    records, _ = _run(_seeds({"id": "a", "instruction": "Name rivers", "output": "x"},
                             {"id": "a", "instruction": "Name lakes", "output": "y"}), rounds=1)
    chains = _by_root(records)
    assert {root: [(x["round"], x["status"]) for x in chain] for root, chain in chains.items()} == {
        "a": [(0, KEPT), (1, KEPT)], "quarantined:s.jsonl:2": [(0, QUARANTINED)]}
    assert chains["quarantined:s.jsonl:2"][0]["id"] == "quarantined:s.jsonl:2"


class SeedRecordingGenerator(ScriptedGenerator):
    def __init__(self):
        super().__init__()
        self.seeds: list[tuple[str, int]] = []

    async def generate(self, prompt, sampling):
        kind = "evolve" if ORIGINAL_MARKER in prompt else "judge" if "First instruction:" in prompt else "respond"
        self.seeds.append((kind, sampling.seed))
        return await super().generate(prompt, sampling)


def test_every_request_gets_a_sampling_seed_from_the_run_seed_record_and_kind():
    from evol.operations import stable_hash

    seeds = _seeds({"id": "a", "instruction": "Name rivers"})
    first, second = SeedRecordingGenerator(), SeedRecordingGenerator()
    records = evolve(seeds, first, rounds=1)
    evolve(seeds, second, rounds=1)
    assert first.seeds == second.seeds and len(first.seeds) == 4  # answer, evolve, respond, judge
    candidate = records[1]["id"]
    assert first.seeds == [("respond", stable_hash(0, "a", "respond") & 0x7FFFFFFF),
                           ("evolve", stable_hash(0, candidate, "evolve") & 0x7FFFFFFF),
                           ("respond", stable_hash(0, candidate, "respond") & 0x7FFFFFFF),
                           ("judge", stable_hash(0, candidate, "judge") & 0x7FFFFFFF)]


def test_a_chain_that_ended_in_an_error_goes_on_from_its_last_finished_round():
    from evol.rounds import run_chain

    seeds = _seeds({"id": "f", "instruction": "FAIL later", "output": "x"})
    first = evolve(seeds, ScriptedGenerator(), rounds=3)  # round 1 evolves, then answering fails
    assert [(r["round"], r["status"]) for r in first] == [(0, KEPT), (1, ERROR)]

    class Recovered(ScriptedGenerator):
        async def generate(self, prompt, sampling):
            return await super().generate(prompt.replace("FAIL", "fine"), sampling)

    gen = Recovered()
    again = asyncio.run(run_chain(seeds[0], Roles(gen, gen), EvolveSettings(rounds=3), 50, first))
    assert again[0] == first[0]  # the finished round is kept as it was
    assert [(r["round"], r["status"]) for r in again] == [(0, KEPT), (1, KEPT), (2, KEPT), (3, KEPT)]
    assert again[1]["id"] == first[1]["id"] and again[1]["parent_id"] == "f"
    assert len(gen.calls) == 3 * 3  # rounds 1-3 asked again, the seed's own answer not
    # the budget is charged for what this run made: rounds 1-3, not the seed's record the earlier run paid for
    from evol.rounds import records_made
    assert [r["round"] for r in records_made(again, first)] == [1, 2, 3]
    assert records_made(first, []) == first


def test_model_text_with_lone_surrogates_is_cleaned_and_the_bucket_is_written(tmp_path):
    import pyarrow.parquet as pq

    from evol.output import write_bucket

    class Surrogates(ScriptedGenerator):
        async def generate(self, prompt, sampling):
            gen = await super().generate(prompt, sampling)
            return Generation(gen.text + " \ud83d\ude00 \udc80", gen.prompt_tokens, gen.completion_tokens, gen.finished)

    records = evolve(_seeds({"id": "a", "instruction": "Name rivers"}), Surrogates(), rounds=1)
    write_bucket(str(tmp_path), 0, records, train_on_truncated=False)
    written = pq.read_table(tmp_path / "records" / "bucket-00000.parquet").to_pylist()
    assert [r["status"] for r in written] == [KEPT, KEPT]
    assert written[0]["response"] == "A real and useful answer. \U0001F600 \ufffd"
    assert all("\ufffd" in r["response"] for r in written)


COST = ("requests", "generated_tokens", "prompt_tokens", "gen_seconds")


def _without_cost(records: list[dict]) -> list[dict]:
    """The records as one round after the other writes them: rounds ahead change only what they cost."""
    return [{k: v for k, v in r.items() if k not in COST} for r in records]


# seeds whose chains take every path of the rules: kept, eliminated by each rule, failed, answered in round 0
RULE_PATHS = ({"id": "ok", "instruction": "Name rivers", "output": "x"},
              {"id": "sorry", "instruction": "SORRY", "output": "x"},
              {"id": "same", "instruction": "SAME thing", "output": "x"},
              {"id": "leak", "instruction": "LEAK this", "output": "x"},
              {"id": "fail", "instruction": "FAIL here", "output": "x"},
              {"id": "fresh", "instruction": "Name lakes"},
              {"id": "fail0", "instruction": "FAIL without answer"})


def test_rounds_ahead_write_the_same_records_and_charge_every_request_to_one():
    """Later rounds started while a candidate is judged ask the same requests as rounds one after the
    other, so the records are the same; those cancelled when the candidate is then not kept are charged
    to that candidate, so the cost columns still add up to every request the engine was asked."""
    seeds = _seeds(*RULE_PATHS)
    runs = {}
    for ahead in (0, 1, 20):
        gen = SlowScriptedGenerator()
        runs[ahead] = (evolve(seeds, gen, rounds=3, rounds_ahead=ahead), gen)
        assert sum(r["requests"] or 0 for r in runs[ahead][0]) == gen.asked
    before = runs[0][0]
    for ahead in (1, 20):
        after = runs[ahead][0]
        assert _without_cost(after) == _without_cost(before)
        extra = {r["id"]: a["requests"] - r["requests"] for r, a in zip(before, after) if a["requests"] != r["requests"]}
        by_id = {r["id"]: r for r in after}
        # charged: the candidates answered, then not kept (sorry's rounds 1 and 2, same's, the failed answer),
        # and fail0's seed whose own answer failed; never a kept record or a round-3 one
        assert sorted((by_id[i]["root_id"], by_id[i]["round"], by_id[i]["status"]) for i in extra) == [
            ("fail", 1, ERROR), ("fail0", 0, ERROR), ("same", 1, ELIMINATED), ("same", 2, ELIMINATED),
            ("sorry", 1, ELIMINATED), ("sorry", 2, ELIMINATED)], ahead
        assert all(n >= 1 for n in extra.values())
        # every request asked without rounds ahead is asked with them
        from collections import Counter
        assert not Counter(runs[0][1].calls) - Counter(runs[ahead][1].calls)


@pytest.mark.parametrize("ahead", [False, True])
def test_a_seed_is_answered_while_its_first_rewrite_runs(ahead):
    """A seed evolves whatever its generated answer says, so its round-1 rewrite need not wait for it."""
    gen = InterleavingGenerator()
    records = evolve(_seeds({"id": "a", "instruction": "seed-00 Name rivers"}), gen, rounds=1, rounds_ahead=20 if ahead else 0)
    assert [x["status"] for x in records] == [KEPT, KEPT] and [x["requests"] for x in records] == [1, 3]
    together = any({("00", "respond", 0), ("00", "evolve", 0)} <= moment for moment in gen.overlaps)
    assert together == ahead


class SlowAnswers(InterleavingGenerator):
    """Requests take 1 ms but those of the keys in `slow` (kind, how many kept rounds its text carries:
    "Explain why." is appended by each), which take the seconds given; records what is in flight."""

    def __init__(self, slow: dict[tuple[str, int], float]):
        super().__init__()
        self.slow, self.asked = slow, 0

    async def generate(self, prompt, sampling):
        self.asked += 1
        kind = "evolve" if ORIGINAL_MARKER in prompt else "judge" if "First instruction:" in prompt else "respond"
        key = (kind, prompt.count("Explain why."))
        self.in_flight.add(key)
        self.overlaps.append(set(self.in_flight))
        await asyncio.sleep(self.slow.get(key, 0.001))
        self.in_flight.discard(key)
        return await ScriptedGenerator.generate(self, prompt, sampling)


@pytest.mark.parametrize("ahead", [0, 1])
def test_a_seeds_long_answer_holds_no_later_rewrite_back(ahead):
    """The seed evolves whatever its answer says, so its answer is no verdict to wait for: with a round
    ahead, round 2's rewrite starts as soon as round 1's passed its text rules, while a long seed answer
    still runs, and round 3's once round 1's equality check has passed it (settled: only its answer's
    rules could still eliminate it); without, one round after the other."""
    gen = SlowAnswers({("respond", 0): 0.3})  # the seed's answer; rounds 1-3 evolve and answer quickly
    records = evolve(_seeds({"id": "a", "instruction": "seed-00 Name rivers"}), gen, rounds=3, rounds_ahead=ahead)
    assert [(x["round"], x["status"]) for x in records] == [(0, KEPT), (1, KEPT), (2, KEPT), (3, KEPT)]
    assert sum(x["requests"] for x in records) == gen.asked == 1 + 3 * 3
    second_rewrite_beside_seed_answer = any({("respond", 0), ("evolve", 1)} <= moment for moment in gen.overlaps)
    third_rewrite_beside_seed_answer = any({("respond", 0), ("evolve", 2)} <= moment for moment in gen.overlaps)
    assert second_rewrite_beside_seed_answer == third_rewrite_beside_seed_answer == bool(ahead)


@pytest.mark.parametrize("ahead", [0, 1])
def test_a_candidate_its_check_eliminated_sends_its_parent_on_before_its_answer_ends(ahead):
    """Its parent evolves next whatever the answer says (the answer's rules only name the reason), so
    with a round ahead the next round rewrites the parent as soon as the equality check says Equal,
    while the candidate's long answer still runs; it used to wait for that answer. The rewrite started
    on the guess that the candidate is kept is cancelled and charged to it; the records are those of one
    round after the other."""
    seeds = _seeds({"id": "a", "instruction": "seed-00 SAME thing", "output": "x"})
    plain = ScriptedGenerator()
    before = evolve(seeds, plain, rounds=2, rounds_ahead=0)
    gen = SlowAnswers({("respond", 1): 0.3})  # round 1's answer (round 2's, from the parent, is quick)
    records = evolve(seeds, gen, rounds=2, rounds_ahead=ahead)
    assert [(x["round"], x["status"], x["reason"]) for x in records] == [
        (0, KEPT, None), (1, ELIMINATED, rules.NO_INFORMATION_GAIN), (2, ELIMINATED, rules.NO_INFORMATION_GAIN)]
    assert _without_cost(records) == _without_cost(before)
    assert sum(x["requests"] for x in records) == gen.asked
    parent_rewritten_beside_answer = any({("respond", 1), ("evolve", 0)} <= moment for moment in gen.overlaps)
    assert parent_rewritten_beside_answer == bool(ahead)
    assert records[2]["requests"] == 3  # round 2 as asked from the parent
    assert (records[1]["requests"] > 3) == bool(ahead)  # and the round guessed from the candidate, charged to it


def test_a_revision_cancelled_by_an_earlier_one_still_charges_what_it_cancelled():
    """Round 2's check eliminates it first (round 3, guessed from it, is cancelled and charged to it),
    then round 1's does: round 2 is cancelled in turn, and what it had charged moves with it to round 1.
    Every request the engine was asked is in some record's cost."""
    seeds = _seeds({"id": "a", "instruction": "seed-00 SAME thing", "output": "x"})
    before = evolve(seeds, ScriptedGenerator(), rounds=3, rounds_ahead=0)
    gen = SlowAnswers({("judge", 1): 0.3, ("respond", 1): 0.6})  # round 1's check and answer; round 2's are quick
    records = evolve(seeds, gen, rounds=3, rounds_ahead=20)
    assert [(x["round"], x["status"]) for x in records] == [(0, KEPT), (1, ELIMINATED), (2, ELIMINATED), (3, ELIMINATED)]
    assert _without_cost(records) == _without_cost(before)
    assert sum(x["requests"] for x in records) == gen.asked
    assert records[1]["requests"] > 3 + 3  # its own, and round 2 and 3 guessed from its candidate


def test_an_engine_that_goes_down_cancels_the_rewrite_asked_ahead():
    from evol.rounds import run_chain
    from generation.types import EngineDown

    class DownOnAnswer(ScriptedGenerator):
        cancelled = 0

        async def generate(self, prompt, sampling):
            if ORIGINAL_MARKER in prompt:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            elif "First instruction:" not in prompt:  # answering the round-1 candidate
                await asyncio.sleep(0.01)
                raise EngineDown("engine crashed")
            return await super().generate(prompt, sampling)

    async def chain():
        gen = DownOnAnswer()
        with pytest.raises(EngineDown):
            await run_chain(_seeds({"id": "a", "instruction": "fine", "output": "x"})[0], Roles(gen, gen),
                            EvolveSettings(rounds=3), 50)
        await asyncio.sleep(0)
        return gen.cancelled, asyncio.all_tasks() - {asyncio.current_task()}

    cancelled, left = asyncio.run(chain())
    assert cancelled == 1 and not left  # the round-2 rewrite was stopped, nothing of the chain runs on



class RoomyGenerator(SlowScriptedGenerator):
    """An engine that says it has rows free (hf, vLLM): chains may ask for fallback rewrites."""

    def __init__(self, rows: int = 64):
        super().__init__()
        self.rows = rows
        self.evolving = self.peak_evolving = 0

    def spare_rows(self) -> int:
        return self.rows - self.in_flight

    async def generate(self, prompt, sampling):
        rewrite = ORIGINAL_MARKER in prompt
        self.evolving += rewrite
        self.peak_evolving = max(self.peak_evolving, self.evolving)
        try:
            return await super().generate(prompt, sampling)
        finally:
            self.evolving -= rewrite


@pytest.mark.parametrize("ahead", [0, 1, 20])
def test_fallback_rewrites_write_the_same_records_and_charge_every_request_to_one(ahead):
    """A fallback rewrite is the request the next round asks if the candidate is eliminated (its parent
    evolves again), so the records are those of rounds one after the other; one not needed is charged
    to the record whose verdict made it so, and the cost columns add up to every request asked."""
    seeds = _seeds(*RULE_PATHS, {"id": "cut", "instruction": "CUT this", "output": "x"})
    plain = SlowScriptedGenerator()
    before = evolve(seeds, plain, rounds=3, rounds_ahead=0)
    gen = RoomyGenerator()
    after = evolve(seeds, gen, rounds=3, rounds_ahead=ahead)
    assert sum(r["requests"] or 0 for r in after) == gen.asked
    assert _without_cost(after) == _without_cost(before)
    from collections import Counter
    assert not Counter(plain.calls) - Counter(gen.calls)  # every request of one round after the other is asked
    assert gen.asked > plain.asked  # and fallbacks beside them: the kept chains' were not needed
    by_id = {r["id"]: r for r in after}
    extra = {i for i, r in by_id.items() if r["requests"] != next(b for b in before if b["id"] == i)["requests"]}
    # charged to candidates; a seed's record only where rounds ahead charge it (its own answer failed)
    assert all(by_id[i]["round"] >= 1 or (ahead and i == "fail0") for i in extra)
    assert gen.peak_evolving >= 2  # a chain's next rewrite ran beside the one it may replace


def test_fallback_rewrites_take_a_truncating_chain_two_rounds_at_a_time():
    """Every rewrite of CUT runs to its limit and is eliminated, and each next round evolves the same
    parent: with fallbacks the next round's rewrite runs beside the current one, so the chain is done in
    about half the time of one rewrite after the other; never on an engine that does not say it has room."""
    import time

    seeds = _seeds({"id": "cut", "instruction": "CUT this", "output": "x"})
    spans, gens = {}, {}
    for name, gen in (("plain", SlowScriptedGenerator()), ("roomy", RoomyGenerator()), ("full", RoomyGenerator(0))):
        start = time.perf_counter()
        records = evolve(seeds, gen, rounds=6, rounds_ahead=0)
        spans[name], gens[name] = time.perf_counter() - start, gen
        assert [(x["round"], x["reason"]) for x in records][1:] == [(i, rules.TRUNCATED_EVOLUTION) for i in range(1, 7)]
        assert sum(x["requests"] for x in records) == gen.asked
    assert gens["roomy"].peak_evolving == 2 and gens["full"].peak_evolving == 1
    assert gens["full"].asked == gens["plain"].asked == 6
    assert spans["roomy"] < 0.75 * spans["plain"], spans


def test_only_an_engine_that_says_it_has_rows_free_is_asked_for_fallbacks():
    """The actor's writer is the backend metered and behind a circuit breaker: both pass on what the
    backend says; a backend that says nothing (an endpoint billed by the token) has no room, and an
    engine whose breaker opened has none either."""
    from evol.breaker import CircuitBreaker
    from evol.rounds import engine_has_room
    from generation.registry import Metered

    roomy, silent = RoomyGenerator(rows=5), ScriptedGenerator()
    writer = CircuitBreaker(Metered(roomy), limit=3, role="generation")
    assert writer.spare_rows() == 5 and engine_has_room(writer)
    assert not engine_has_room(CircuitBreaker(Metered(silent), limit=3, role="generation"))
    assert not engine_has_room(CircuitBreaker(Metered(RoomyGenerator(rows=0)), limit=3, role="generation"))
    writer.cause = "the generation engine failed 3 requests in a row"
    assert writer.spare_rows() == 0 and not engine_has_room(writer)
