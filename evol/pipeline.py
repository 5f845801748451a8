"""Ray Data glue of the evolve job: seeds → validate → dedupe → evolve (actor pool) → parquet.

One actor pool of generators serves round 0, every round and all three request kinds
(evolve, respond, equality check): the model loads once per actor for the whole job, and a
batch of seeds runs all its rounds inside the actor (rows are independent), so nothing waits
on a round barrier and no second pool ever asks for resources the first one holds.
"""
from __future__ import annotations

import importlib.resources
import os
import time
from typing import Iterator

import pyarrow as pa

from common import storage
from common.config import UserError
from common.models import SMALL_MODEL_ALIAS, pin_local_model, resolve_model
from common.ray_setup import init_ray
from evol.config import BUNDLED_PREFIX, TRUNCATING_BACKENDS, EvolveConfig, SeedsConfig, prompt_budget_problem
from evol.records import KEPT, SEED_SCHEMA, TRAINING_SCHEMA, in_training_set, records_table
from evol.rounds import Roles, evolve_rows
from evol.seeds import (SUPPORTED_SUFFIXES, SeedFields, jsonl_pieces, mark_duplicates, parse_jsonl, parse_seed_file,
                        seed_table, source_name)
from evol.summary import SUMMARY_COLUMNS, SummaryBuilder, format_summary
from evol.templates import template_overheads, user_turn
from generation import GenerationConfig, check_model_available, driver_api_key
from generation.prompts import prompt_token_ids
from generation.types import Secret


def resolve_seed_path(path: str) -> str:
    if path.startswith(BUNDLED_PREFIX):
        return str(importlib.resources.files("evol") / "data" / path[len(BUNDLED_PREFIX):])
    return path


def preflight(cfg: EvolveConfig) -> str:
    """Every check that needs no Ray and no model: fail in a second, not after a model load."""
    seeds = resolve_seed_path(cfg.seeds.path)
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
    check_model_available(cfg.generation, "generation")
    if cfg.judge is not None:
        check_model_available(cfg.judge, "judge")
    check_prompt_budget(cfg)
    if storage.absolute(seeds).startswith(storage.absolute(cfg.output.path).rstrip("/") + "/"):
        raise UserError(f"output.path: {cfg.output.path} contains the seeds; choose another output folder")
    if storage.is_nonempty_dir(cfg.output.path):
        if not cfg.output.overwrite:
            raise UserError(f"output.path: {cfg.output.path} already holds results; "
                            "choose another path or set output.overwrite=true")
        storage.delete_dir(cfg.output.path)
    storage.check_writable(cfg.output.path)
    return seeds


def template_tokens(gen: GenerationConfig) -> list[int] | None:
    """Token counts of templates.template_overheads() as this backend sends them (chat template
    included), when it cuts prompts itself and its tokenizer is on this machine; else None."""
    if gen.backend not in TRUNCATING_BACKENDS:
        return None
    if gen.model != SMALL_MODEL_ALIAS and not os.path.isdir(os.path.expanduser(gen.model)):
        return None  # a hub id or s3 folder: not fetched here; the config's word bound stands
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(pin_local_model(gen.model)))
    return [len(prompt_token_ids(text, gen.prompt_format, tokenizer)) for text in template_overheads()]


def check_prompt_budget(cfg: EvolveConfig) -> None:
    """The config's check that the longest instruction plus the longest template fits
    max_prompt_tokens, again with the writer's (and judge's) tokenizer instead of words."""
    writer = template_tokens(cfg.generation)
    judge = writer if cfg.judge is None else template_tokens(cfg.judge)
    if writer is None and judge is None:
        return
    words = [len(text.split()) for text in template_overheads()]
    problem = prompt_budget_problem(cfg, (writer or words)[:-1] + [(judge or words)[-1]], "tokens")
    if problem:
        raise UserError(f"config error: {problem}")


def seed_files(path: str) -> list[str]:
    """The seed file, or a folder's seed files in sorted order (the order `seeds.limit` counts in)."""
    if not storage.is_dir(path):
        return [path]
    return [f for f in storage.list_files(path) if f.lower().endswith(SUPPORTED_SUFFIXES)]


def is_jsonl(path: str) -> bool:
    return path.lower().endswith((".jsonl", ".ndjson"))


def file_rows(path: str, source: str, fields: SeedFields, piece_bytes: int) -> Iterator[list[dict]]:
    """The seed rows of one file, a piece at a time: jsonl in pieces of whole lines (exact line
    numbers, never the whole file in memory), json and parquet whole."""
    filesys, inner = storage.filesystem(path)
    with filesys.open_input_stream(inner) as stream:
        if not is_jsonl(path):
            yield parse_seed_file(stream.read(), source, fields)
            return
        for first_line, piece in jsonl_pieces(stream, piece_bytes):
            yield parse_jsonl(piece, source, fields, first_line)


def read_seed_files(batch: pa.Table, fields: SeedFields, root: str, piece_bytes: int,
                    limit: int | None) -> Iterator[pa.Table]:
    """Ray Data generator UDF. Needs `path` (seed files, in order); yields SEED_SCHEMA tables, one
    per piece. Ids and `source` are relative to `root` (seeds.path). Duplicate ids inside a piece
    are marked here; `limit`: only the first N rows, in the order of the batch's files and lines."""
    for path in batch.column("path").to_pylist():
        for rows in file_rows(path, source_name(path, root), fields, piece_bytes):
            rows = mark_duplicates(rows)
            if limit is not None:
                rows, limit = rows[:limit], limit - min(limit, len(rows))
            yield seed_table(rows)
            if limit == 0:
                return


def dedupe_group(group: pa.Table) -> pa.Table:
    return seed_table(mark_duplicates(group.to_pylist()))


def needs_shuffle_dedupe(files: list[str], piece_bytes: int) -> bool:
    """Duplicates across files, or across the pieces of one large jsonl file, need a shuffle by id."""
    if len(files) != 1:
        return True
    filesys, inner = storage.filesystem(files[0])
    return is_jsonl(files[0]) and filesys.get_file_info(inner).size > piece_bytes


def read_seed_rows(path: str, cfg: SeedsConfig):
    """Dataset of SEED_SCHEMA rows, one per input row, bad rows marked (never dropped).

    Without a limit every file is read by a task of its own. With one, a single task reads the
    files in sorted order and stops after `limit` rows: the same rows every run."""
    import ray

    fields = SeedFields(cfg.instruction_field, cfg.input_field, cfg.response_field, cfg.id_field)
    files = seed_files(path)
    paths = ray.data.from_items([{"path": f} for f in files],
                                override_num_blocks=1 if cfg.limit is not None else len(files))
    rows = paths.map_batches(read_seed_files, batch_size=None if cfg.limit is not None else 1,
                             batch_format="pyarrow", fn_kwargs=dict(fields=fields, root=path,
                                                                    piece_bytes=cfg.piece_bytes, limit=cfg.limit))
    if not needs_shuffle_dedupe(files, cfg.piece_bytes):
        return rows
    by_id = rows.groupby("seed_id", num_partitions=cfg.dedupe_partitions)
    return by_id.map_groups(dedupe_group, batch_format="pyarrow")


class EvolveActor:
    """Ray Data async callable class. Needs SEED_SCHEMA columns; yields RECORD_SCHEMA rows.

    Every row's chain runs as its own coroutine, and several calls are in flight per actor, so
    the engine always has requests from many chains and rounds to batch.
    """

    def __init__(self, cfg: EvolveConfig, api_keys: dict[str, Secret | None]):
        from generation import build_generator

        self.cfg = cfg
        writer = build_generator(cfg.generation, api_keys["generation"])
        judge = build_generator(cfg.judge, api_keys["judge"]) if cfg.judge is not None else writer
        self.roles = Roles(writer=writer, judge=judge)
        self.started = time.perf_counter()
        self.seeds_done = 0

    async def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [name for name in SEED_SCHEMA.names if name not in batch.column_names]
        if missing:
            raise ValueError(f"EvolveActor needs seed columns {missing}")
        records = await evolve_rows(batch.to_pylist(), self.roles, self.cfg.evolve,
                                    self.cfg.seeds.max_instruction_tokens)
        self.seeds_done += batch.num_rows
        kept = sum(r["status"] == KEPT and r["round"] > 0 for r in records)
        candidates = sum(r["round"] > 0 for r in records)
        print(f"[evolve] {batch.num_rows} seeds done ({self.seeds_done} by this actor): {kept}/{candidates} "
              f"candidates kept, {time.perf_counter() - self.started:.0f} s", flush=True)
        return records_table(records)


def training_rows(batch: pa.Table, train_on_truncated: bool) -> pa.Table:
    """Needs RECORD_SCHEMA columns; yields TRAINING_SCHEMA rows of the records `in_training_set`."""
    rows = []
    for row in batch.to_pylist():
        if not in_training_set(row, train_on_truncated):
            continue
        messages = [{"role": "user", "content": user_turn(row["instruction"], row["input"])},
                    {"role": "assistant", "content": row["response"]}]
        rows.append({name: row.get(name) for name in TRAINING_SCHEMA.names if name != "messages"}
                    | {"messages": messages, "round": int(row["round"])})
    return pa.Table.from_pylist(rows, schema=TRAINING_SCHEMA)


def read_records(records_dir: str, columns: list[str] | None = None):
    import ray
    from ray.data.datasource import Partitioning

    partitioning = Partitioning("hive", base_dir=records_dir, field_types={"round": int})
    records = ray.data.read_parquet(records_dir, partitioning=partitioning)
    return records.select_columns(columns) if columns else records


def write_training_set(records_dir: str, out_dir: str, train_on_truncated: bool) -> None:
    """Kept rows, less rejected seed answers and (unless `train_on_truncated`) cut responses."""
    from ray.data.expressions import col

    kept = read_records(records_dir).filter(expr=col("status") == KEPT)
    training = kept.map_batches(training_rows, fn_kwargs={"train_on_truncated": train_on_truncated},
                                batch_format="pyarrow").materialize()  # one pass, two writes
    training.write_parquet(storage.join(out_dir, "parquet"))
    training.drop_columns(["root_id", "round", "op", "instruction", "input", "response"]) \
        .write_json(storage.join(out_dir, "jsonl"))


def summarize(records_dir: str, wall_seconds: float, train_on_truncated: bool) -> dict:
    builder = SummaryBuilder(train_on_truncated)
    for batch in read_records(records_dir, SUMMARY_COLUMNS).iter_batches(batch_format="numpy"):
        builder.add_batch(batch)
    return builder.build(wall_seconds)


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


def run_evolve(cfg: EvolveConfig) -> dict:
    preflight(cfg)
    cfg = with_absolute_paths(cfg)
    ray = init_ray(cfg.ray)
    started = time.time()
    gen = cfg.generation
    seeds = read_seed_rows(cfg.seeds.path, cfg.seeds)
    records = seeds.map_batches(
        EvolveActor, fn_constructor_kwargs={"cfg": cfg, "api_keys": {
            "generation": driver_api_key(gen), "judge": driver_api_key(cfg.judge) if cfg.judge else None}}, batch_size=gen.rows_per_call, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=gen.concurrency[0], max_size=gen.concurrency[1],
                                           max_concurrent_calls_per_actor=gen.calls_per_actor),
        num_cpus=gen.num_cpus, num_gpus=gen.num_gpus)
    records_dir = storage.join(cfg.output.path, "records")
    records.write_parquet(records_dir, partition_cols=["status", "round"])
    if not storage.exists(records_dir):
        raise UserError(f"seeds.path: {cfg.seeds.path} holds no seed rows")
    on_truncated = cfg.evolve.train_on_truncated_responses
    write_training_set(records_dir, storage.join(cfg.output.path, "training"), on_truncated)
    summary = summarize(records_dir, time.time() - started, on_truncated)
    summary["output"] = cfg.output.path
    storage.write_json(storage.join(cfg.output.path, "summary.json"), summary)
    storage.write_text(storage.join(cfg.output.path, "config.yaml"), _config_yaml(cfg))
    print(format_summary(summary))
    print(f"records: {records_dir}/status=<kept|eliminated|quarantined>/round=<r>/")
    print(f"training set: {storage.join(cfg.output.path, 'training')}/{{parquet,jsonl}}/")
    return summary


def _config_yaml(cfg: EvolveConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


