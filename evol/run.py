"""The evolve job from config to dataset: preflight, Ray, the dataflow, the summary and the card.

One actor pool of generators serves round 0, every round and every request kind: the model
loads once per actor for the whole job. Seeds are grouped into buckets (evol/resume.py); an
actor runs the chains of a bucket concurrently with every other chain in flight and writes the
bucket's records as one file the moment its last chain ends. A rerun skips finished buckets.
"""
from __future__ import annotations

import time

import yaml

from common import storage
from common.config import UserError
from common.models import pin_local_model
from common.ray_setup import init_ray, wait_for_room
from evol.accounting import accounting_error
from evol.card import render_card
from evol.config import EvolveConfig
from evol.dataflow import evolve_buckets, record_failed_buckets
from evol.finish import summarize
from evol.output import JOB, record_files
from evol.preflight import check_room, preflight
from evol.reading import READ_COUNTS, read_counts, resolve_seed_path
from evol.resume import buckets_in, config_dict
from evol.summary import format_summary
from generation import GenerationConfig


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

def retry_lost_buckets(ray, cfg: EvolveConfig, records_dir: str, per_actor: dict[str, int]) -> dict[str, int]:
    """Buckets read but not written had their worker die on every retry: a seed that kills its
    process, or a lost node (its calls fail at once, three times, before Ray declares the node
    dead). They run once more in a fresh pool; what fails again is recorded as an error."""
    _, read, _ = read_counts(storage.join(cfg.output.path, READ_COUNTS))
    written = frozenset(buckets_in(storage.list_files(records_dir)))
    if not read - written:
        return per_actor
    print(f"[evolve] {len(read - written)} bucket(s) lost their worker; running them once more", flush=True)
    again = evolve_buckets(ray, cfg, frozenset(range(cfg.output.buckets)) - (read - written))
    return {actor: per_actor.get(actor, 0) + again.get(actor, 0) for actor in per_actor.keys() | again.keys()}

def run_evolve(cfg: EvolveConfig) -> dict:
    preflight(cfg)
    given, cfg = cfg, with_absolute_paths(cfg)
    ray = init_ray(cfg.ray)
    check_room(ray, cfg)
    wait_for_room("generation", {"CPU": cfg.generation.num_cpus, "GPU": cfg.generation.num_gpus})
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1  # a failed bucket is recorded, not fatal
    # The pool queues no call at a busy actor (dataflow.py), so its utilization never passes 100%:
    # at Ray Data's default threshold (175%) a [1, N] pool never grew past one actor. Grow when all are busy.
    context.autoscaling_config.actor_pool_util_upscaling_threshold = 1.0
    started = time.time()
    done = start_run(cfg)
    per_actor = evolve_buckets(ray, cfg, done)
    records_dir = storage.join(cfg.output.path, "records")
    per_actor = retry_lost_buckets(ray, cfg, records_dir, per_actor)
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
