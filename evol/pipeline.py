"""Ray Data glue of the evolve job: seeds → buckets → evolve (async actor pool) → bucket files.

One actor pool of generators serves round 0, every round and every request kind: the model
loads once per actor for the whole job. Seeds are grouped into buckets (evol/resume.py); an
actor runs the chains of a bucket concurrently with every other chain in flight and writes the
bucket's records as one file the moment its last chain ends. A rerun skips finished buckets.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import time

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from common import storage
from common.config import UserError
from common.models import SMALL_MODEL_ALIAS, pin_local_model
from common.ray_setup import init_ray
from common.s3 import preflight_s3
from common.tokenizer import tokenizer_path
from evol.accounting import accounting, accounting_error, chain_problems
from evol.card import render_card
from evol.config import TRUNCATING_BACKENDS, EvolveConfig, prompt_budget_problem
from evol.reading import READ_COUNTS, read_counts, read_seed_buckets, resolve_seed_path, seed_rows, unread_files
from evol.records import ERROR, KEPT, TRAINING_SCHEMA, empty_record, in_training_set, records_table
from evol.resume import bucket_file, buckets_in, config_changes
from evol.rounds import Roles, quarantine_record, run_chain
from evol.seeds import SUPPORTED_SUFFIXES
from evol.summary import SummaryBuilder, accelerators_per_engine, format_summary, reserved_accelerator_seconds
from evol.templates import template_overheads, user_turn
from generation import GenerationConfig, check_model_available, driver_api_key
from generation.prompts import prompt_token_ids
from generation.types import Secret

JOB = "evolve"
WORKER_FAILED = "worker_failed"
# A call whose worker dies is retried this often, then its buckets are recorded as errors. The
# actor itself restarts without limit: Ray Data never replaces a dead actor of its pool (it
# assumes restarts "indefinitely until execution finishes", actor_pool_map_operator.py), and a
# pool whose only actor is dead waits forever. Measured: max_restarts=2 hung after a poison seed.
MAX_CALL_RETRIES = 2


def check_seeds(cfg: EvolveConfig) -> str:
    seeds = resolve_seed_path(cfg.seeds.path)
    preflight_s3(seeds, "seeds.path", write=False)
    if not storage.exists(seeds):
        raise UserError(f"seeds.path: {cfg.seeds.path} does not exist")
    if storage.is_dir(seeds):
        files = storage.list_files(seeds)
        ignored = [f for f in files if not f.lower().endswith(SUPPORTED_SUFFIXES)]
        if len(ignored) == len(files):
            raise UserError(f"seeds.path: {cfg.seeds.path} holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
        if ignored:
            print(f"warning: seeds.path: ignoring {len(ignored)} file(s) that are not "
                  f"{'/'.join(SUPPORTED_SUFFIXES)}: {', '.join(os.path.basename(f) for f in ignored[:5])}")
    elif not seeds.lower().endswith(SUPPORTED_SUFFIXES):
        raise UserError(f"seeds.path: {cfg.seeds.path} is not one of {', '.join(SUPPORTED_SUFFIXES)}")
    return seeds


def check_output(cfg: EvolveConfig) -> None:
    """A new folder, the same run again (resume), or overwrite of a folder this job made."""
    out = cfg.output.path
    preflight_s3(out, "output.path", write=True)
    if storage.is_nonempty_dir(out):
        if cfg.output.overwrite:
            storage.delete_owned_dir(out, JOB)
        elif storage.owner(out) != JOB or not storage.exists(storage.join(out, "config.yaml")):
            raise UserError(f"output.path: {out} already holds results that are not an evolve run; "
                            "choose another path")
        else:
            saved = yaml.safe_load(storage.read_text(storage.join(out, "config.yaml")))
            changes = config_changes(saved, config_dict(cfg))
            if changes:
                raise UserError(f"output.path: {out} holds a run with another config (changed: {', '.join(changes)}); "
                                "rerun with its config to resume it, or set output.overwrite=true to start over")
    storage.check_writable(out)


def preflight(cfg: EvolveConfig) -> str:
    """Every check that needs no Ray and no model: fail in a second, not after a model load."""
    seeds = check_seeds(cfg)
    check_model_available(cfg.generation, "generation")
    if cfg.judge is not None:
        check_model_available(cfg.judge, "judge")
    check_prompt_budget(cfg)
    if storage.absolute(seeds).startswith(storage.absolute(cfg.output.path).rstrip("/") + "/"):
        raise UserError(f"output.path: {cfg.output.path} contains the seeds; choose another output folder")
    check_output(cfg)
    return seeds


def check_room(ray, cfg: EvolveConfig) -> None:
    """On a fixed-size Ray (no autoscaler), a pool that holds every CPU starves the light read and
    shuffle tasks and the job hangs without a word: refuse it with the numbers instead."""
    if os.environ.get("RAY_ADDRESS") or cfg.ray.address:
        return  # a cluster may add nodes
    gen, total = cfg.generation, ray.cluster_resources()
    need_cpus, need_gpus = gen.concurrency[1] * gen.num_cpus, gen.concurrency[1] * gen.num_gpus
    if need_cpus > total.get("CPU", 0) - 0.5:
        raise UserError(f"generation.concurrency: {gen.concurrency[1]} actors x num_cpus {gen.num_cpus:g} = "
                        f"{need_cpus:g} CPUs leave no room for reading seeds on this {total.get('CPU', 0):g}-CPU Ray; "
                        "lower generation.num_cpus (e.g. 0.5) or the pool size")
    if need_gpus > total.get("GPU", 0):
        raise UserError(f"generation.concurrency: {gen.concurrency[1]} actors x num_gpus {gen.num_gpus:g} need "
                        f"{need_gpus:g} GPUs; this Ray has {total.get('GPU', 0):g}")


def driver_tokenizer(gen: GenerationConfig):
    """The tokenizer of a backend that cuts prompts itself, read on the driver without the weights
    (an s3 folder's tokenizer files only; a hub id's from the hub), or None where it cannot be
    read here (a hub the driver cannot reach): the actors then check with their own."""
    if gen.backend not in TRUNCATING_BACKENDS:
        return None
    from transformers import AutoTokenizer

    local = gen.model == SMALL_MODEL_ALIAS or os.path.isdir(os.path.expanduser(gen.model))
    try:
        return AutoTokenizer.from_pretrained(tokenizer_path(pin_local_model(gen.model)))
    except OSError:
        if local:
            raise
        return None


def template_tokens(gen: GenerationConfig, tokenizer) -> list[int] | None:
    """Token counts of templates.template_overheads() as this backend sends them (chat template
    included), or None without a tokenizer."""
    if tokenizer is None or gen.backend not in TRUNCATING_BACKENDS:
        return None
    return [len(prompt_token_ids(text, gen.prompt_format, tokenizer)) for text in template_overheads()]


def check_prompt_budget(cfg: EvolveConfig, writer=None, judge=None) -> None:
    """The config's check that the longest instruction plus the longest template fits
    max_prompt_tokens, again with the writer's (and judge's) tokenizer instead of words: the
    driver's (`driver_tokenizer`) before any work, an actor's own engines' as it starts."""
    if writer is None:
        writer = driver_tokenizer(cfg.generation)
    if judge is None:
        judge = writer if cfg.judge is None else driver_tokenizer(cfg.judge)
    writer_counts = template_tokens(cfg.generation, writer)
    judge_counts = template_tokens(cfg.judge or cfg.generation, judge)
    if writer_counts is None and judge_counts is None:
        return
    words = [len(text.split()) for text in template_overheads()]
    problem = prompt_budget_problem(cfg, (writer_counts or words)[:-1] + [(judge_counts or words)[-1]], "tokens")
    if problem:
        raise UserError(f"config error: {problem}")


def write_parquet(path: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(path, sink.getvalue())


def write_bucket(out: str, bucket: int, records: list[dict], train_on_truncated: bool) -> None:
    """The bucket's training rows (parquet + chat jsonl), then its records: a record file is the
    bucket's completion mark, so it is written last."""
    training = training_rows(records, train_on_truncated)
    if training.num_rows:
        name = bucket_file(bucket)
        write_parquet(storage.join(out, "training", "parquet", name), training)
        lines = (json.dumps({"id": row["id"], "messages": row["messages"]}, ensure_ascii=False) + "\n"
                 for row in training.select(["id", "messages"]).to_pylist())
        storage.write_bytes_atomic(storage.join(out, "training", "jsonl", name.replace(".parquet", ".jsonl")),
                                   "".join(lines).encode())
    write_parquet(storage.join(out, "records", bucket_file(bucket)), records_table(records))


class EvolveActor:
    """Ray Data async callable class over BUCKET_SCHEMA rows (whole buckets); writes each bucket's
    records and yields one row of counts per bucket (bucket, seeds, records, kept, errors, actor).

    Every seed's chain is its own coroutine; up to `rows_per_call x calls_per_actor` chains are in
    flight per actor, across all buckets and calls, so the engine always has requests to batch.
    """

    def __init__(self, cfg: EvolveConfig, api_keys: dict[str, Secret | None]):
        from generation import build_generator

        self.cfg = cfg
        writer = build_generator(cfg.generation, api_keys["generation"])
        judge = build_generator(cfg.judge, api_keys["judge"]) if cfg.judge is not None else writer
        # The driver may not have read a hub model's tokenizer: never cut a template's rules away.
        check_prompt_budget(cfg, getattr(writer, "tokenizer", None), getattr(judge, "tokenizer", None))
        self.roles = Roles(writer=writer, judge=judge)
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        self.started, self.seeds_done = time.perf_counter(), 0
        self.slots: asyncio.Semaphore | None = None

    async def _chain(self, row: dict) -> list[dict]:
        async with self.slots:
            return await run_chain(row, self.roles, self.cfg.evolve, self.cfg.seeds.max_instruction_tokens)

    async def _bucket(self, bucket: int, rows: list[dict]) -> dict:
        chains = await asyncio.gather(*(self._chain(row) for row in rows))
        records = [record for chain in chains for record in chain]
        await asyncio.to_thread(write_bucket, self.cfg.output.path, bucket, records,
                                self.cfg.evolve.train_on_truncated_responses)
        self.seeds_done += len(rows)
        return {"bucket": bucket, "seeds": len(rows), "records": len(records), "actor": self.actor,
                "kept": sum(r["status"] == KEPT and r["round"] > 0 for r in records),
                "errors": sum(r["status"] == ERROR for r in records)}

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.slots is None:
            gen = self.cfg.generation
            self.slots = asyncio.Semaphore(gen.rows_per_call * gen.calls_per_actor)
        done = await asyncio.gather(*(self._bucket(b, rows) for b, rows in seed_rows(batch)))
        print(f"[evolve] {sum(d['seeds'] for d in done)} seeds in {len(done)} bucket(s) written ({self.seeds_done} seeds by "
              f"{self.actor}): {sum(d['kept'] for d in done)} candidates kept, "
              f"{time.perf_counter() - self.started:.0f} s", flush=True)
        return pa.Table.from_pylist(done)


def failed_bucket_records(batch: pa.Table, out: str) -> pa.Table:
    """Buckets whose worker died on every retry: every row of them is recorded (bad seeds
    quarantined as usual, the others as errors), so that no row is lost and reruns end."""
    written = []
    for bucket, rows in seed_rows(batch):
        records = [quarantine_record(row) if row["error"] is not None else empty_record(
            id=row["seed_id"], root_id=row["seed_id"], round=0, op="seed", instruction=row["instruction"],
            input=row["input"], source=row["source"], line=row["line"], status=ERROR, reason=WORKER_FAILED,
            detail="the worker evolving this bucket died repeatedly") for row in rows]
        write_bucket(out, bucket, records, train_on_truncated=False)
        written.append({"bucket": bucket, "seeds": len(rows)})
    return pa.Table.from_pylist(written)


def training_rows(records: list[dict], train_on_truncated: bool) -> pa.Table:
    """TRAINING_SCHEMA rows of the records `in_training_set`."""
    rows = []
    for row in records:
        if not in_training_set(row, train_on_truncated):
            continue
        messages = [{"role": "user", "content": user_turn(row["instruction"], row["input"])},
                    {"role": "assistant", "content": row["response"]}]
        rows.append({name: row.get(name) for name in TRAINING_SCHEMA.names if name != "messages"}
                    | {"messages": messages, "round": int(row["round"])})
    return pa.Table.from_pylist(rows, schema=TRAINING_SCHEMA)


def read_records(records_dir: str, columns: list[str] | None = None):
    """The records as a Ray dataset (complete bucket files only)."""
    import ray

    files = record_files(records_dir)
    return ray.data.read_parquet(files, columns=columns) if files else ray.data.from_items([])


def record_files(records_dir: str) -> list[str]:
    return [f for f in storage.list_files(records_dir) if buckets_in([f])]


def summarize(cfg: EvolveConfig, records_dir: str, wall_seconds: float, per_actor: dict[str, int]) -> dict:
    """Summary, cost and accounting in one pass, a bucket file at a time (driver memory: one bucket).
    `per_actor`: seeds evolved per actor in this run (the actors the pool held)."""
    builder, problems, round0 = SummaryBuilder(cfg.evolve.train_on_truncated_responses), [], 0
    for path in record_files(records_dir):
        filesys, inner = storage.filesystem(path)
        rows = pq.read_table(inner, filesystem=filesys).to_pylist()
        builder.add_rows(rows)
        problems += chain_problems(rows, cfg.evolve.rounds)
        round0 += sum(row["round"] == 0 for row in rows)
    summary = builder.build(wall_seconds)
    summary["cost"] = builder.cost(accelerators_per_engine(cfg.generation),
                                   reserved_accelerator_seconds(cfg.generation, wall_seconds, len(per_actor)),
                                   cfg.cost.price_per_accelerator_hour)
    input_rows, _, counted = read_counts(storage.join(cfg.output.path, READ_COUNTS))
    unread = unread_files(cfg.seeds.path, counted) if cfg.seeds.limit is None else []
    summary["accounting"] = accounting(input_rows, round0, problems, unread)
    return summary


def with_absolute_paths(cfg: EvolveConfig) -> EvolveConfig:
    """Ray workers run in folders of their own: local paths must not be relative to the driver's."""
    return cfg.model_copy(update={
        "seeds": cfg.seeds.model_copy(update={"path": storage.absolute(resolve_seed_path(cfg.seeds.path))}),
        "output": cfg.output.model_copy(update={"path": storage.absolute(cfg.output.path)}),
        "generation": _pinned(cfg.generation),
        "judge": _pinned(cfg.judge) if cfg.judge is not None else None,
    })


def _pinned(gen: GenerationConfig) -> GenerationConfig:
    return gen.model_copy(update={"model": pin_local_model(gen.model)})


def config_dict(cfg: EvolveConfig) -> dict:
    return cfg.model_dump(mode="json")


def start_run(cfg: EvolveConfig) -> frozenset[int]:
    """Mark the folder as this job's and save the config (a rerun compares against it); the
    finished buckets of an earlier run of the same config are what this run skips."""
    out = cfg.output.path
    if storage.owner(out) != JOB:
        storage.mark_owned(out, JOB)
    config_path = storage.join(out, "config.yaml")
    if not storage.exists(config_path):
        storage.write_text(config_path, yaml.safe_dump(config_dict(cfg), sort_keys=False))
    done = frozenset(buckets_in(storage.list_files(storage.join(out, "records"))))
    if done:
        print(f"[evolve] resuming {out}: {len(done)} bucket(s) already written are skipped", flush=True)
    return done


def evolve_buckets(ray, cfg: EvolveConfig, done: frozenset[int]) -> dict[str, int]:
    """Stream the seeds of unfinished buckets through the actor pool; rows per actor."""
    gen, out = cfg.generation, cfg.output.path
    buckets = read_seed_buckets(cfg.seeds.path, cfg.seeds, cfg.output.buckets, done, storage.join(out, READ_COUNTS))
    keys = {"generation": driver_api_key(gen), "judge": driver_api_key(cfg.judge) if cfg.judge else None}
    stats = buckets.map_batches(
        EvolveActor, fn_constructor_kwargs={"cfg": cfg, "api_keys": keys}, batch_size=1,
        batch_format="pyarrow", num_cpus=gen.num_cpus, num_gpus=gen.num_gpus,
        # No calls queued at a busy actor (Ray Data's default queues 4x): a block waits for the
        # first actor with a free slot, so a few large blocks spread over the whole pool.
        compute=ray.data.ActorPoolStrategy(min_size=gen.concurrency[0], max_size=gen.concurrency[1],
                                           max_concurrent_calls_per_actor=gen.calls_per_actor,
                                           max_tasks_in_flight_per_actor=gen.calls_per_actor),
        max_restarts=-1, max_task_retries=MAX_CALL_RETRIES)
    per_actor: dict[str, int] = {}
    for row in stats.iter_rows():
        per_actor[row["actor"]] = per_actor.get(row["actor"], 0) + row["seeds"]
    return per_actor


def record_failed_buckets(cfg: EvolveConfig, records_dir: str) -> int:
    """Buckets that were read but have no file (their worker died on every retry): error records."""
    _, read, _ = read_counts(storage.join(cfg.output.path, READ_COUNTS))
    failed = read - buckets_in(storage.list_files(records_dir))
    if not failed:
        return 0
    every = frozenset(range(cfg.output.buckets))
    buckets = read_seed_buckets(cfg.seeds.path, cfg.seeds, cfg.output.buckets, every - failed)
    buckets.map_batches(failed_bucket_records, fn_kwargs={"out": cfg.output.path}, batch_size=1,
                        batch_format="pyarrow").materialize()
    print(f"[evolve] {len(failed)} bucket(s) failed {MAX_CALL_RETRIES + 1} times: their seeds are "
          f"recorded as {WORKER_FAILED} errors", flush=True)
    return len(failed)


def run_evolve(cfg: EvolveConfig) -> dict:
    preflight(cfg)
    given, cfg = cfg, with_absolute_paths(cfg)
    ray = init_ray(cfg.ray)
    check_room(ray, cfg)
    ray.data.DataContext.get_current().max_errored_blocks = -1  # a failed bucket is recorded, not fatal
    started = time.time()
    done = start_run(cfg)
    per_actor = evolve_buckets(ray, cfg, done)
    records_dir = storage.join(cfg.output.path, "records")
    record_failed_buckets(cfg, records_dir)
    if not record_files(records_dir):
        raise UserError(f"seeds.path: {cfg.seeds.path} holds no seed rows")
    summary = summarize(cfg, records_dir, time.time() - started, per_actor)
    summary["seeds_per_actor"] = per_actor
    summary["output"] = cfg.output.path
    storage.write_json(storage.join(cfg.output.path, "summary.json"), summary)
    storage.write_text(storage.join(cfg.output.path, "README.md"), render_card(summary, given))  # the user's paths
    print(format_summary(summary))
    print(f"records: {records_dir}/bucket-*.parquet")
    print(f"training set: {storage.join(cfg.output.path, 'training')}/{{parquet,jsonl}}/")
    print(f"dataset card: {storage.join(cfg.output.path, 'README.md')}")
    problem = accounting_error(summary["accounting"])
    if problem:
        raise RuntimeError(problem)
    return summary
