"""Ray Data glue of the evaluate job: test set → answers of both models → judge in both orders → report.

Each generation stage is one autoscaled actor pool (`EvalActor`) that builds its generator once
and keeps every row of a call in flight at once, so the engine batches them. Stages run one after
the other (candidate, baseline, judge: three models that need not fit together). Test sets are
small (hundreds to thousands of items), so the driver holds the items and joins the stages;
answers are written by the pool as they finish, so a killed job keeps what it had answered.
"""
from __future__ import annotations

import time
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from common.config import UserError
from common.models import pin_local_model
from common.ray_setup import init_ray, wait_for_room
from eval import cache
from eval.aggregate import aggregate
from eval.calls import Prefilled, answer, judge, rate, run_all
from eval.config import EvaluateConfig
from eval.difficulty import DIFFICULTY_PREFILL, difficulty_by_round, pick_per_round
from eval.evolution import evolution_stats, read_evolution_records, read_evolve_cost, read_instructions
from eval.judge import VERDICT_PREFILL
from eval.report import FIGURE_BANDS, FIGURE_CATEGORIES, FIGURE_EVOLUTION, caveats, write_report
from eval.rows import ANSWER_SCHEMA, JUDGMENT_SCHEMA, RATING_SCHEMA, item_rows, judge_rows
from eval.testset import quarantine_counts, read_testset, resolve_testset_path, select_items
from generation import (GenerationConfig, SamplingConfig, SamplingParams, build_generator, check_model_available,
                        driver_api_key)
from generation.types import Secret

JOB = "evaluate"
ROLES = ("candidate", "baseline", "judge")
RESULTS = ("report.md", "report.html", "items.parquet", "difficulty.parquet", "summary.json", "config.yaml",
           FIGURE_BANDS, FIGURE_CATEGORIES, FIGURE_EVOLUTION)
Factory = Callable[[GenerationConfig], object]


# kind → (columns each input row needs, request per row, schema of the output rows, cache folder)
KINDS = {"answer": (("id", "request", "instruction"), answer, ANSWER_SCHEMA, "answers"),
         "judge": (("id", "request", "order", "prompt"), judge, JUDGMENT_SCHEMA, "verdicts"),
         "difficulty": (("id", "request", "round", "instruction"), rate, RATING_SCHEMA, "ratings")}


class EvalActor:
    """Ray Data callable class: one generator per actor for the whole stage, every row of a call in
    flight at once. Input and output columns per kind: see KINDS (answer, judge, difficulty); every
    output row carries its input's `request` (the cache key of what was asked)."""

    def __init__(self, gen: GenerationConfig, sampling: SamplingConfig, kind: str, factory: Factory | None = None,
                 api_key: Secret | None = None, prefill: str | None = None):
        if prefill:  # the prompt is rendered by Prefilled, so the engine gets it as is
            gen = gen.model_copy(update={"prompt_format": "raw"})
        self.generator = factory(gen) if factory else build_generator(gen, api_key)
        if prefill:
            self.generator = Prefilled(self.generator, prefill)
        self.sampling = SamplingParams.from_config(sampling)
        self.needs, self.request, self.schema, _ = KINDS[kind]
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
    wait_for_room(f"{kind} pool of {gen.model}", {"CPU": gen.num_cpus, "GPU": gen.num_gpus})
    kwargs = dict(gen=gen, sampling=sampling, kind=kind, factory=factory,
                  api_key=None if factory else driver_api_key(gen), prefill=prefill)
    return ray.data.from_items(rows).map_batches(
        EvalActor, fn_constructor_kwargs=kwargs,
        batch_size=gen.rows_per_call, batch_format="pyarrow", num_cpus=gen.num_cpus, num_gpus=gen.num_gpus,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high,
                                           max_concurrent_calls_per_actor=gen.calls_per_actor))


def cached_stage(rows: list[dict], gen: GenerationConfig, sampling: SamplingConfig, kind: str, out_dir: str,
                 factory: Factory | None = None, prefill: str | None = None) -> tuple[dict[str, dict], dict]:
    """The result rows of one stage by `request`: stored ones reused (see eval.cache), the rest
    generated and stored as they finish. Returns them and the counts reused / generated / failed."""
    *_, schema, folder_name = KINDS[kind]
    settings = cache.generation_settings(gen, sampling) | ({"prefill": prefill} if prefill else {})
    folder = cache.results_dir(out_dir, folder_name, cache.settings_key(settings))
    wanted = {row["request"] for row in rows}
    stored = cache.best_rows(cache.read_rows(folder, schema), wanted)
    todo = [row for row in rows if row["request"] not in stored or cache.must_ask_again(stored[row["request"]])]
    if todo:
        storage.write_json(folder + ".json", settings)
        generate_stage(todo, gen, sampling, kind, factory, prefill).write_parquet(folder)
        stored = cache.best_rows(cache.read_rows(folder, schema), wanted)
    counts = {"reused": len(rows) - len(todo), "generated": len(todo),
              "failed": sum(bool(row["error"]) for row in stored.values())}
    return stored, counts


def answers_for(gen: GenerationConfig, sampling: SamplingConfig, items: list[dict], out_dir: str,
                factory: Factory | None = None) -> tuple[dict[str, dict], dict]:
    """Answers of one model to every item, by item id (an answer is cached by id and instruction)."""
    rows = [{"id": i["id"], "instruction": i["instruction"], "request": cache.request_key(i["id"], i["instruction"])}
            for i in items]
    stored, counts = cached_stage(rows, gen, sampling, "answer", out_dir, factory)
    return {row["id"]: row for row in stored.values()}, counts


def preflight(cfg: EvaluateConfig) -> tuple[list[dict], dict]:
    """Every check that needs no Ray and no model; returns the items and the test set's counts."""
    path = resolve_testset_path(cfg.testset.path)
    rows = read_testset(path, cfg.testset.fields())
    items = select_items(rows, cfg.testset.limit, cfg.testset.per_category)
    quarantined = quarantine_counts(rows)
    if not items:
        raise UserError(f"testset.path: {cfg.testset.path} has no usable items "
                        f"({len(rows)} rows, quarantined: {quarantined or 'none'})")
    for role in ROLES:
        check_model_available(getattr(cfg, role), role)
    prepare_output(cfg, [path, cfg.evolution.output] + [getattr(cfg, role).model for role in ROLES])
    info = {"path": cfg.testset.path, "rows": len(rows), "used": len(items), "quarantined": quarantined}
    return items, info


def prepare_output(cfg: EvaluateConfig, inputs: list[str | None]) -> None:
    """The output folder is an evaluate run's own (owner marker): a rerun reuses its cached
    answers; overwrite empties it first, never when it holds an input. A folder of anything else
    is neither written into nor deleted."""
    path = cfg.output.path
    if cfg.output.overwrite:
        out = storage.absolute(path).rstrip("/")
        inside = [p for p in inputs if p and storage.absolute(p).startswith(out + "/")]
        if inside:
            raise UserError(f"output.path: {path} holds an input ({inside[0]}); choose another folder")
        storage.delete_owned_dir(path, JOB)
    elif storage.is_nonempty_dir(path) and storage.owner(path) != JOB:
        raise UserError(f"output.path: {path} holds files of something else than an evaluate run; "
                        "choose another folder")
    for name in RESULTS:  # an earlier run's results go; its cached answers stay
        if storage.exists(storage.join(path, name)):
            filesys, inner = storage.filesystem(storage.join(path, name))
            filesys.delete_file(inner)
    storage.check_writable(path)
    storage.mark_owned(path, JOB)


def with_absolute_paths(cfg: EvaluateConfig) -> EvaluateConfig:
    """Ray workers run in folders of their own: local paths must not be relative to the driver's."""
    update = {role: getattr(cfg, role).model_copy(update={"model": pin_local_model(getattr(cfg, role).model)})
              for role in ROLES}
    update["output"] = cfg.output.model_copy(update={"path": storage.absolute(cfg.output.path)})
    return cfg.model_copy(update=update)


def build_summary(cfg: EvaluateConfig, testset: dict, agg: dict, answers: dict, evolution: dict | None,
                  seconds: dict) -> dict:
    models = {role: {"model": getattr(cfg, role).model, "backend": getattr(cfg, role).backend,
                     "prompt_format": getattr(cfg, role).prompt_format} for role in ROLES}
    notes = ([cfg.report.note] if cfg.report.note else []) + caveats(agg, models)
    return {"models": models, "testset": testset, "answers": answers, "aggregates": agg, "evolution": evolution,
            "notes": notes, "seconds": seconds, "output": cfg.output.path, "judge_prefill": cfg.judge_prefill,
            "sampling": {"answers": cfg.answer_sampling.model_dump(), "judge": cfg.judge_sampling.model_dump()}}


def judgments_for(cfg: EvaluateConfig, items: list[dict], candidate: dict, baseline: dict,
                  factory: Factory | None = None) -> tuple[list[dict], dict]:
    """Both verdicts of every item with two answers, and their cache counts. A verdict is cached
    by its whole prompt, so a changed answer is judged again."""
    prompts = [row | {"request": cache.request_key(row["id"], row["order"], row["prompt"])}
               for row in judge_rows(items, candidate, baseline)]
    if not prompts:
        return [], {"reused": 0, "generated": 0, "failed": 0}
    stored, counts = cached_stage(prompts, cfg.judge, cfg.judge_sampling, "judge", cfg.output.path, factory,
                                  VERDICT_PREFILL if cfg.judge_prefill else None)
    return list(stored.values()), counts


def evolution_for(cfg: EvaluateConfig, records: pa.Table, factory: Factory | None = None) -> dict:
    """The evolution analysis, with the evolve job's cost when its summary has one; with
    `difficulty_per_round`, the judge also rates a sample of each round's kept instructions (raw
    ratings written to difficulty.parquet)."""
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
    stored, counts = cached_stage(rows, cfg.judge, cfg.evolution.difficulty_sampling, "difficulty",
                                  cfg.output.path, factory, DIFFICULTY_PREFILL if cfg.judge_prefill else None)
    ratings = sorted(stored.values(), key=lambda r: (r["round"], r["id"]))
    write_rows(ratings, storage.join(cfg.output.path, "difficulty.parquet"))
    return stats | {"difficulty": difficulty_by_round(ratings), "ratings": counts}


def write_rows(rows: list[dict], path: str) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    storage.write_bytes_atomic(path, sink.getvalue().to_pybytes())


def _timed(seconds: dict, name: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds[name] = round(time.perf_counter() - started, 2)
    return result


def run_evaluate(cfg: EvaluateConfig, generator_factories: dict[str, Factory] | None = None) -> dict:
    """The whole job. `generator_factories` (role → callable) builds a role's generator another way
    than its config says: for tests and for embedding the job in other code."""
    factories = generator_factories or {}
    items, testset = preflight(cfg)
    records = read_evolution_records(cfg.evolution.output) if cfg.evolution.output else None
    cfg = with_absolute_paths(cfg)
    init_ray(cfg.ray)
    out, seconds, answers, stored = cfg.output.path, {}, {}, {}
    for role in ("candidate", "baseline"):
        stored[role], answers[role] = _timed(seconds, f"{role} answers", answers_for, getattr(cfg, role),
                                             cfg.answer_sampling, items, out, factories.get(role))
    judgments, verdicts = _timed(seconds, "judge", judgments_for, cfg, items, stored["candidate"],
                                 stored["baseline"], factories.get("judge"))
    evolution = None if records is None else _timed(seconds, "evolution analysis", evolution_for, cfg, records,
                                                    factories.get("judge"))
    rows = item_rows(items, stored["candidate"], stored["baseline"], judgments)
    report = cfg.report
    agg = aggregate(rows, report.bootstrap_samples, report.confidence, report.seed, report.threshold)
    summary = build_summary(cfg, testset, agg, answers, evolution, seconds) | {"verdicts": verdicts}
    write_rows(rows, storage.join(out, "items.parquet"))
    storage.write_json(storage.join(out, "summary.json"), summary)
    storage.write_text(storage.join(out, "config.yaml"), _config_yaml(cfg))
    paths = write_report(summary, out)
    print(f"[evaluate] answers {answers}; verdicts {verdicts}; {agg['verdicts']['failed']} of "
          f"{agg['verdicts']['verdicts']} verdicts without scores")
    print(f"[evaluate] score ratio candidate/baseline: {_headline(agg)}")
    print(f"report: {paths['html']} (and report.md, items.parquet, summary.json)")
    return summary


def _headline(agg: dict) -> str:
    overall = agg["overall"]
    if overall["ratio"] is None:
        return "n/a (nothing could be judged)"
    low, high = overall["ci"]
    return f"{100 * overall['ratio']:.1f}% ({100 * low:.1f}%-{100 * high:.1f}%), " \
           f"win/tie/loss {overall['win']}/{overall['tie']}/{overall['loss']}"


def _config_yaml(cfg: EvaluateConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
