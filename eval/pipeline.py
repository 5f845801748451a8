"""Ray Data glue of the evaluate job: test set → answers of each model → judge → report.

Each generation stage is one autoscaled actor pool (`EvalActor`) that builds its generator once
and keeps every row of a call in flight at once, so the engine batches them. Stages run one after
the other (candidate, baseline, judge: three models that need not fit together). Test sets are
small (hundreds to thousands of items), so the driver holds the items and joins the stages;
answers are written by the pool as they finish, so a killed job keeps what it had answered.
pairwise: the judge sees both answers, in both orders; single: it grades each answer alone.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from common.ray_setup import init_ray, wait_for_room
from eval import cache
from eval.aggregate import aggregate, aggregate_single
from eval.budget import TRUNCATING_BACKENDS, Measure, tokenizer_measure
from eval.calls import Prefilled, answer, grade, judge, prefilled, rate, run_all
from eval.config import EvaluateConfig
from eval.difficulty import DIFFICULTY_PREFILL, DIFFICULTY_REMINDER, DIFFICULTY_TEMPLATE, difficulty_by_round, \
    pick_per_round
from eval.evolution import evolution_stats, read_evolution_records, read_evolve_cost, read_instructions
from eval.judge import GRADE_PREFILL, GRADE_REMINDER, RETRY_REMINDER, VERDICT_PREFILL
from eval.preflight import preflight
from eval.report import caveats, write_report
from eval.rows import (ANSWER_SCHEMA, GRADE_SCHEMA, JUDGMENT_SCHEMA, RATING_SCHEMA, grade_item_rows, grade_rows,
                       item_rows, judge_rows)
from eval.testset import quarantine_table
from generation import GenerationConfig, SamplingConfig, SamplingParams, build_generator, driver_api_key
from generation.ratelimit import share_rate_limits
from generation.types import Secret

Factory = Callable[[GenerationConfig], object]

# kind → (columns each input row needs, request per row, schema of the output rows, cache folder,
#         texts the job builds that kind of request from beyond each request's key)
KINDS = {"answer": (("id", "request", "instruction"), answer, ANSWER_SCHEMA, "answers", ()),
         "judge": (("id", "request", "order", "prompt"), judge, JUDGMENT_SCHEMA, "verdicts", (RETRY_REMINDER,)),
         "grade": (("id", "request", "role", "prompt"), grade, GRADE_SCHEMA, "grades", (GRADE_REMINDER,)),
         "difficulty": (("id", "request", "round", "instruction"), rate, RATING_SCHEMA, "ratings",
                        (DIFFICULTY_TEMPLATE, DIFFICULTY_REMINDER))}
NO_REQUESTS = {"reused": 0, "generated": 0, "failed": 0}


class EvalActor:
    """Ray Data callable class: one generator per actor for the whole stage, every row of a call in
    flight at once. Input and output columns per kind: see KINDS (answer, judge, grade, difficulty);
    every output row carries its input's `request` (the cache key of what was asked)."""

    def __init__(self, gen: GenerationConfig, sampling: SamplingConfig, kind: str, factory: Factory | None = None,
                 api_key: Secret | None = None, prefill: str | None = None):
        if prefill:  # the prompt is rendered by Prefilled, so the engine gets it as is
            gen = gen.model_copy(update={"prompt_format": "raw"})
        self.generator = factory(gen) if factory else build_generator(gen, api_key)
        if prefill:
            self.generator = Prefilled(self.generator, prefill)
        self.sampling = SamplingParams.from_config(sampling)
        self.needs, self.request, self.schema, _, _ = KINDS[kind]
        self.kind = kind

    async def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [name for name in self.needs if name not in batch.column_names]
        if missing:
            raise ValueError(f"EvalActor({self.kind}) needs columns {missing}")
        rows = batch.to_pylist()
        results = await run_all(self.request(self.generator, r, self.sampling) for r in rows)
        return pa.Table.from_pylist([out | {"request": r["request"]} for r, out in zip(rows, results)],
                                    schema=self.schema)


def generate_stage(rows: list[dict], gen: GenerationConfig, sampling: SamplingConfig, kind: str,
                   factory: Factory | None = None, prefill: str | None = None):
    """The lazy dataset of one generation stage over `rows` (one actor pool of `gen`'s size). An
    openai role's key is read here, on the driver, and handed to the actors."""
    import ray

    low, high = gen.concurrency
    share_rate_limits(gen)  # api: the job-wide rate limiter of an openai role, owned by the driver
    wait_for_room(f"{kind} pool of {gen.model}", {"CPU": gen.num_cpus, "GPU": gen.num_gpus})
    kwargs = dict(gen=gen, sampling=sampling, kind=kind, factory=factory,
                  api_key=None if factory else driver_api_key(gen), prefill=prefill)
    return ray.data.from_items(rows).map_batches(
        EvalActor, fn_constructor_kwargs=kwargs,
        batch_size=gen.rows_per_call, batch_format="pyarrow", num_cpus=gen.num_cpus, num_gpus=gen.num_gpus,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high,
                                           max_concurrent_calls_per_actor=gen.calls_per_actor))


@dataclass(frozen=True)
class Stage:
    """Who answers a stage and how: a role's generation config, its sampling, the kind of request,
    and what the cache key needs beyond them (the engine's resolved device/dtype, a prefill)."""

    gen: GenerationConfig
    sampling: SamplingConfig
    kind: str
    engine: dict = field(default_factory=dict)
    prefill: str | None = None
    factory: Factory | None = None


def cached_stage(rows: list[dict], stage: Stage, out_dir: str) -> tuple[dict[str, dict], dict]:
    """The result rows of one stage by `request`: stored ones reused (see eval.cache), the rest
    generated and stored as they finish. Returns them and the counts reused / generated / failed."""
    _, _, schema, folder_name, templates = KINDS[stage.kind]
    texts = templates + ((prefilled("{prompt}", stage.prefill),) if stage.prefill else ())
    settings = cache.generation_settings(stage.gen, stage.sampling, stage.engine, texts) | \
        ({"prefill": stage.prefill} if stage.prefill else {})
    folder = cache.results_dir(out_dir, folder_name, cache.settings_key(settings))
    wanted = {row["request"] for row in rows}
    stored = cache.best_rows(cache.read_rows(folder, schema), wanted)
    todo = [row for row in rows if row["request"] not in stored or cache.must_ask_again(stored[row["request"]])]
    if todo:
        storage.write_json(folder + ".json", settings)
        generate_stage(todo, stage.gen, stage.sampling, stage.kind, stage.factory, stage.prefill).write_parquet(folder)
        stored = cache.best_rows(cache.read_rows(folder, schema), wanted)
    counts = {"reused": len(rows) - len(todo), "generated": len(todo),
              "failed": sum(bool(row["error"]) for row in stored.values())}
    return stored, counts


def answers_for(gen: GenerationConfig, sampling: SamplingConfig, items: list[dict], out_dir: str,
                factory: Factory | None = None, engine: dict | None = None) -> tuple[dict[str, dict], dict]:
    """Answers of one model to every item, by item id (an answer is cached by id and instruction)."""
    rows = [{"id": i["id"], "instruction": i["instruction"], "request": cache.request_key(i["id"], i["instruction"])}
            for i in items]
    stored, counts = cached_stage(rows, Stage(gen, sampling, "answer", engine or {}, factory=factory), out_dir)
    return {row["id"]: row for row in stored.values()}, counts


def with_absolute_paths(cfg: EvaluateConfig) -> EvaluateConfig:
    """Ray workers run in folders of their own: local paths must not be relative to the driver's."""
    update = {role: gen.with_local_model_pinned() for role, gen in cfg.roles().items()}
    update["output"] = cfg.output.model_copy(update={"path": storage.absolute(cfg.output.path)})
    return cfg.model_copy(update=update)


def display_name(model: str) -> str:
    """A model as a reader knows it: a local folder by its path under the working folder (or its last
    two parts), never a long absolute path; aliases, hub ids and s3:// paths as given."""
    if not model.startswith("/") or not os.path.isdir(model):
        return model
    relative = os.path.relpath(model)
    return relative if not relative.startswith("..") else "/".join(model.rstrip("/").split("/")[-2:])


def build_summary(cfg: EvaluateConfig, testset: dict, agg: dict, answers: dict, evolution: dict | None,
                  seconds: dict, engines: dict) -> dict:
    models = {role: {"model": gen.model, "name": display_name(gen.model), "backend": gen.backend,
                     "prompt_format": gen.prompt_format, **engines.get(role, {})} for role, gen in cfg.roles().items()}
    notes = ([cfg.report.note] if cfg.report.note else []) + caveats(agg, models, cfg.answer_sampling.max_tokens)
    return {"mode": cfg.mode, "models": models, "testset": testset, "answers": answers, "aggregates": agg,
            "evolution": evolution, "notes": notes, "seconds": seconds, "output": cfg.output.path,
            "judge_prefill": cfg.judge_prefill, "judge_max_prompt_tokens": cfg.judge.max_prompt_tokens,
            "sampling": {"answers": cfg.answer_sampling.model_dump(), "judge": cfg.judge_sampling.model_dump()}}


@dataclass(frozen=True)
class Run:
    """What every stage of one run shares."""

    cfg: EvaluateConfig
    factories: dict[str, Factory]
    engines: dict[str, dict]
    measure: Measure | None  # the judge's prompt budget (None: its backend does not cut prompts)

    def stage(self, role: str, sampling: SamplingConfig, kind: str, prefill: str | None = None) -> Stage:
        return Stage(getattr(self.cfg, role), sampling, kind, self.engines.get(role, {}),
                     prefill if self.cfg.judge_prefill else None, self.factories.get(role))


def judgments_for(run: Run, items: list[dict], answers: dict) -> tuple[list[dict], dict, dict]:
    """Both verdicts of every item with two answers, their cache counts and each item's fit in the
    judge's prompt. A verdict is cached by its whole prompt, so a changed answer is judged again."""
    rows, fits = judge_rows(items, answers["candidate"], answers["baseline"], run.measure)
    return (*judge_stage(run, rows, "order", "judge", VERDICT_PREFILL), fits)


def grades_for(run: Run, items: list[dict], answers: dict) -> tuple[list[dict], dict, dict]:
    """The judge's grade of every answer alone (single mode), cached by its whole prompt."""
    rows, fits = grade_rows(items, answers, run.measure)
    return (*judge_stage(run, rows, "role", "grade", GRADE_PREFILL), fits)


def judge_stage(run: Run, rows: list[dict], key: str, kind: str, prefill: str) -> tuple[list[dict], dict]:
    """The judge's replies to `rows` (cached by id, `key` and the whole prompt) and their cache counts."""
    prompts = [row | {"request": cache.request_key(row["id"], row[key], row["prompt"])} for row in rows]
    if not prompts:
        return [], dict(NO_REQUESTS)
    stored, counts = cached_stage(prompts, run.stage("judge", run.cfg.judge_sampling, kind, prefill),
                                  run.cfg.output.path)
    return list(stored.values()), counts


def evolution_for(run: Run, records: pa.Table) -> dict:
    """The evolution analysis, with the evolve job's cost when its summary has one; with
    `difficulty_per_round`, the judge also rates a sample of each round's kept instructions (raw
    ratings written to difficulty.parquet)."""
    cfg = run.cfg
    stats = evolution_stats(records)
    cost = read_evolve_cost(cfg.evolution.output)
    if cost is not None:
        stats["cost"] = cost
    per_round = cfg.evolution.difficulty_per_round
    if not per_round:
        return stats
    kept = records.filter(pc.equal(records["status"], "kept")).select(["id", "round"]).to_pylist()
    picked = pick_per_round(kept, per_round, cfg.evolution.seed)
    texts = read_instructions(cfg.evolution.output, [row["id"] for row in picked])
    rows = [row | {"instruction": texts[row["id"]], "request": cache.request_key(row["id"], texts[row["id"]])}
            for row in picked if texts.get(row["id"])]
    stored, counts = cached_stage(rows, run.stage("judge", cfg.evolution.difficulty_sampling, "difficulty",
                                                  DIFFICULTY_PREFILL), cfg.output.path)
    ratings = sorted(stored.values(), key=lambda r: (r["round"], r["id"]))
    write_rows(ratings, storage.join(cfg.output.path, "difficulty.parquet"))
    return stats | {"difficulty": difficulty_by_round(ratings), "ratings": counts}


def write_rows(rows: list[dict] | pa.Table, path: str) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows), sink)
    storage.write_bytes_atomic(path, sink.getvalue().to_pybytes())


def _timed(seconds: dict, name: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds[name] = round(time.perf_counter() - started, 2)
    return result


def judge_measure(cfg: EvaluateConfig, tokenizer) -> Measure | None:
    """The judge's prompt budget when its engine cuts prompts (hf, vllm) and its tokenizer could be read."""
    if cfg.judge.backend not in TRUNCATING_BACKENDS or tokenizer is None:
        return None
    prefill, reminder = (VERDICT_PREFILL, RETRY_REMINDER) if cfg.mode == "pairwise" else (GRADE_PREFILL, GRADE_REMINDER)
    return tokenizer_measure(tokenizer, cfg.judge, reminder,
                             (lambda p: prefilled(p, prefill)) if cfg.judge_prefill else None)


def score(run: Run, items: list[dict], answers: dict, seconds: dict) -> tuple[list[dict], dict, dict]:
    """(item rows, aggregates, judge request counts) of the configured mode."""
    cfg, report = run.cfg, run.cfg.report
    if cfg.mode == "single":
        grades, counts, fits = _timed(seconds, "judge", grades_for, run, items, answers)
        rows = grade_item_rows(items, answers, grades, fits)
        return rows, aggregate_single(rows, cfg.answering_roles(), report.bootstrap_samples, report.confidence,
                                      report.seed), counts
    judgments, counts, fits = _timed(seconds, "judge", judgments_for, run, items, answers)
    rows = item_rows(items, answers, judgments, fits, cfg.judge.require_both_orders, cfg.judge.disagreement_as_tie)
    agg = aggregate(rows, report.bootstrap_samples, report.confidence, report.seed, report.threshold,
                    cfg.judge.require_both_orders, cfg.judge.disagreement_as_tie)
    return rows, agg, counts


def run_evaluate(cfg: EvaluateConfig, generator_factories: dict[str, Factory] | None = None) -> dict:
    """The whole job. `generator_factories` (role → callable) builds a role's generator another way
    than its config says: for tests and for embedding the job in other code."""
    prepared = preflight(cfg)
    records = read_evolution_records(cfg.evolution.output) if cfg.evolution.output else None
    cfg = with_absolute_paths(cfg)
    init_ray(cfg.ray)
    out, seconds, answers, counts = cfg.output.path, {}, {}, {}
    write_rows(quarantine_table(prepared.rows), storage.join(out, "quarantine.parquet"))
    run = Run(cfg, generator_factories or {}, cache.resolve_engines(cfg.roles()),
              judge_measure(cfg, prepared.tokenizers.get("judge")))
    for role in cfg.answering_roles():
        answers[role], counts[role] = _timed(seconds, f"{role} answers", answers_for, getattr(cfg, role),
                                             cfg.answer_sampling, prepared.items, out, run.factories.get(role),
                                             run.engines.get(role))
    rows, agg, verdicts = score(run, prepared.items, answers, seconds)
    evolution = None if records is None else _timed(seconds, "evolution analysis", evolution_for, run, records)
    summary = build_summary(cfg, prepared.testset | {"listed": listed_rows(prepared.rows)}, agg, counts, evolution,
                            seconds, run.engines) | {"verdicts": verdicts}
    write_rows(rows, storage.join(out, "items.parquet"))
    storage.write_json(storage.join(out, "summary.json"), summary)
    storage.write_text(storage.join(out, "config.yaml"), _config_yaml(cfg))
    paths = write_report(summary, out)
    print(f"[evaluate] answers {counts}; judge requests {verdicts}; {agg['verdicts']['failed']} of "
          f"{agg['verdicts']['verdicts']} without scores")
    print(f"[evaluate] {_headline(agg)}")
    print(f"report: {paths['html']} (and report.md, items.parquet, summary.json)")
    return summary


LISTED_ROWS = 20  # quarantined rows and dropped fields named in the report (all are in quarantine.parquet)


def listed_rows(rows: list[dict]) -> list[dict]:
    """The first quarantined rows and rows with a dropped field, with where they are and why."""
    listed = [{"id": r["id"], "where": f"{r['source']}:{r['line']}", "problem": r["error"] or "field dropped",
               "detail": r["detail"] if r["error"] else r["dropped"]}
              for r in rows if r["error"] is not None or r["dropped"]]
    return listed[:LISTED_ROWS]


def _headline(agg: dict) -> str:
    if agg["mode"] == "single":
        return "mean grade: " + ", ".join(f"{role} {g['mean']:.2f}/10 (n={g['n']})" if g["mean"] is not None
                                          else f"{role} n/a" for role, g in agg["grades"].items())
    overall = agg["overall"]
    if overall["ratio"] is None:
        return "score ratio candidate/baseline: n/a (nothing could be judged)"
    low, high = overall["ci"]
    return f"score ratio candidate/baseline: {100 * overall['ratio']:.1f}% ({100 * low:.1f}%-{100 * high:.1f}%), " \
           f"win rate {100 * overall['win_rate']:.1f}%, " \
           f"win/tie/loss {overall['win']}/{overall['tie']}/{overall['loss']}"


def _config_yaml(cfg: EvaluateConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
