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
from common.ray_setup import init_ray, wait_for_room
from evol.accounting import accounting_error
from evol.budget import budget_outcome, format_budget, refused_buckets, start_budget
from evol.card import render_card
from evol.config import EvolveConfig
from evol.curation import curate, evaluation_sets
from evol.dataflow import PoolRun, RunStopped, evolve_buckets, record_failed_buckets
from evol.finish import summarize
from evol.identity import with_absolute_paths
from evol.inflight import InFlight
from evol.output import JOB, buckets_with_errors, record_files
from evol.preflight import check_room, preflight
from evol.reading import READ_COUNTS, read_counts
from evol.resume import INPUTS, buckets_in
from evol.summary import format_summary


def start_run(cfg: EvolveConfig, identity: dict) -> frozenset[int]:
    """Mark the folder as this job's and save the run's identity (a rerun compares against it); the
    finished buckets of an earlier run of the same config are what this run skips."""
    out = cfg.output.path
    if storage.owner(out) != JOB:
        storage.mark_owned(out, JOB)
    config_path = storage.join(out, "config.yaml")
    if not storage.exists(config_path) or INPUTS not in yaml.safe_load(storage.read_text(config_path)):
        storage.write_text(config_path, yaml.safe_dump(identity, sort_keys=False))
    InFlight(out).clear()  # markers of a run that was killed
    records_dir = storage.join(out, "records")
    written = buckets_in(storage.list_files(records_dir))
    retried = buckets_with_errors(records_dir) if written and cfg.evolve.retry_errors else set()
    if written:
        print(f"[evolve] resuming {out}: {len(written - retried)} bucket(s) already written are skipped"
              + (f"; the error chains of {len(retried)} bucket(s) are retried" if retried else ""), flush=True)
    return frozenset(written - retried)

def retry_lost_buckets(ray, cfg: EvolveConfig, records_dir: str, pool: PoolRun, refused: frozenset[int]) -> PoolRun:
    """Buckets read but not written had their worker die on every retry: a seed that kills its
    process, or a lost node (its calls fail at once, three times, before Ray declares the node
    dead). They run once more in a fresh pool; what fails again is recorded as an error. `refused`:
    buckets the budget did not start (left for a rerun with a higher one)."""
    _, read, _ = read_counts(storage.join(cfg.output.path, READ_COUNTS))
    lost = read - buckets_in(storage.list_files(records_dir)) - refused
    if not lost:
        return pool
    print(f"[evolve] {len(lost)} bucket(s) lost their worker; running them once more", flush=True)
    again = evolve_buckets(ray, cfg, frozenset(range(cfg.output.buckets)) - lost)
    return pool.merged(again)


def run_evolve(cfg: EvolveConfig) -> dict:
    identity = preflight(cfg)
    sets = evaluation_sets(cfg)  # the evaluation sets the training rows are checked against, read before any work
    given, cfg = cfg, with_absolute_paths(cfg)
    ray = init_ray(cfg.ray)
    check_room(ray, cfg)
    wait_for_room("generation", {"CPU": cfg.generation.num_cpus, "GPU": cfg.generation.num_gpus})
    ray.data.DataContext.get_current().max_errored_blocks = -1  # a failed bucket is recorded, not fatal
    started = time.time()
    records_dir = storage.join(cfg.output.path, "records")
    keeper = start_budget(ray, cfg, records_dir)
    earlier = start_run(cfg, identity)  # buckets an earlier run wrote: skipped
    pool = evolve_buckets(ray, cfg, earlier)
    if not pool.stopped:
        pool = retry_lost_buckets(ray, cfg, records_dir, pool, refused_buckets(ray, keeper))
    budget = budget_outcome(ray, keeper)
    InFlight(cfg.output.path).clear()
    refused = frozenset(budget["refused_buckets"]) if budget else frozenset()
    record_failed_buckets(cfg, records_dir, frozenset(pool.stopped) | refused)
    if pool.stopped:
        raise RunStopped(f"{pool.cause}; {len(pool.stopped)} bucket(s) are left unwritten: rerun the same command "
                         "to do them once the engine works")
    if not record_files(records_dir):
        raise UserError(f"seeds.path: {cfg.seeds.path} holds no seed rows")
    finish = curate(ray, cfg, records_dir, sets)  # contamination and near-duplicates over the whole output
    summary = summarize(cfg, records_dir, time.time() - started, pool.per_actor, budget["refused_rows"] if budget else 0,
                        earlier)
    summary.update(dedupe=finish.pop("dedupe"), decontamination=finish.pop("decontamination"), finish_stage=finish)
    summary["seeds_per_actor"] = pool.per_actor
    summary["actors"] = {actor: {"seeds": n, **pool.gauges.get(actor, {})} for actor, n in pool.per_actor.items()}
    if budget:
        summary["budget"] = budget
    summary["output"] = cfg.output.path
    storage.write_json(storage.join(cfg.output.path, "summary.json"), summary)
    storage.write_text(storage.join(cfg.output.path, "README.md"), render_card(summary, given))  # the user's paths
    print(report(summary, cfg))
    problem = accounting_error(summary["accounting"])
    if problem:
        raise RuntimeError(problem)
    return summary


def batch_fill(gauges: dict, generation) -> str:
    """hf: how full its batch was kept (rows per decode step, or per static generate())."""
    if gauges.get("mean_batch_rows") is None:
        return ""
    computing = gauges.get("engine_computing_share")
    computing = f", the model computing {100 * computing:.0f}% of the time" if computing is not None else ""
    on_cpu = gauges.get("engine_on_cpu_share")
    if computing and on_cpu is not None:  # on CPU: did other processes take cores from it?
        computing += f" (its thread on a core {100 * on_cpu:.0f}% of that)"
    if generation.batching == "continuous":
        cached = gauges.get("prefix_cached_share")
        cached = f", {100 * cached:.0f}% of prompt tokens from the prefix cache" if cached is not None else ""
        return f", {gauges['mean_batch_rows']:.1f} rows per decode step of {generation.batch_size}{computing}{cached}"
    return (f", {gauges['mean_batch_rows']:.1f} rows per batch of {generation.batch_size}"
            f" ({gauges.get('released_rows') or 0} unfinished rows carried to a later batch){computing}")


def unused_requests(gauges: dict) -> str:
    """The waste of evolve.rounds_ahead and evolve.fallback_rewrites: requests started on a guess about a
    candidate's verdict that did not hold."""
    fallbacks = (f"; {gauges['fallbacks_started']} fallback rewrites started, {gauges.get('fallbacks_taken') or 0} "
                 "taken up" if gauges.get("fallbacks_started") else "")
    if not gauges.get("unused_requests"):
        return fallbacks
    return (fallbacks + f"; {gauges['unused_requests']} requests started ahead of a verdict were cancelled "
            f"({gauges['unused_tokens']} tokens, in the cost of the records whose verdicts made them moot)")


def report(summary: dict, cfg: EvolveConfig) -> str:
    """The summary, each actor's gauges (is the engine kept full?) and where the outputs are."""
    out = cfg.output.path
    lines = [format_summary(summary)]
    for actor, gauges in summary["actors"].items():
        lines.append(f"actor {actor}: {gauges['seeds']} seeds, {gauges.get('mean_chains_in_flight', 0):.1f} chains "
                     f"in flight on average, peak {gauges.get('peak_chains_in_flight')} "
                     f"(max_chains {cfg.generation.chains_in_flight()}), engine busy "
                     f"{100 * gauges.get('engine_busy_share', 0):.0f}% of the time"
                     + batch_fill(gauges, cfg.generation) + unused_requests(gauges))
    if summary.get("budget"):
        lines.append(format_budget(summary["budget"]))
    lines += [f"records: {storage.join(out, 'records')}/bucket-*.parquet",
              f"training set: {storage.join(out, 'training')}/{{parquet,jsonl}}/",
              f"dataset card: {storage.join(out, 'README.md')}"]
    return "\n".join(lines)
