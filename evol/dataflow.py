"""The evolve job's Ray Data graph: seeds -> buckets -> the actor pool -> one row of counts per bucket,
and the record of buckets whose worker died on every retry.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass, field

import pyarrow as pa

from common import storage
from common.config import UserError
from evol.actor import EvolveActor
from evol.config import EvolveConfig, actor_resources
from evol.output import write_bucket
from evol.reading import READ_COUNTS, read_counts, read_seed_buckets, seed_rows
from evol.resume import buckets_in
from evol.rounds import WORKER_FAILED, worker_failed_chain
from generation import driver_api_key
from generation.ratelimit import format_rate_limits, share_rate_limits

# A call (one bucket) whose worker dies is retried this often, then its bucket is recorded as errors.
# A poison bucket needs 3 tries (beside others, alone, then recorded: evol/inflight.py); the rest is
# room for a bucket that dies beside more than one poison. The actor itself restarts without limit:
# Ray Data never replaces a dead actor of its pool (it assumes restarts "indefinitely until execution
# finishes", actor_pool_map_operator.py), and a pool whose only actor is dead waits forever. Measured:
# max_restarts=2 hung after a poison seed. Deaths while starting are bounded in evol/inflight.py.
MAX_CALL_RETRIES = 4
# How long a pool of more than one actor waits for its first `concurrency[0]` actors before any bucket
# is handed out; past it the job stops with the cause (the cluster cannot place them).
POOL_START_TIMEOUT_S = 1800

@dataclass
class PoolRun:
    """What the pool did: seeds evolved per actor, each actor's mean chains in flight, engine busy share
    and chain seconds (first chain's start to last chain's end), and the buckets an actor left unwritten because its engine was down (with the first cause)."""
    per_actor: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, dict] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)
    cause: str | None = None

    def merged(self, later: PoolRun) -> PoolRun:
        """This pool's run and a later pool's over other buckets (its actors are others)."""
        seeds = {actor: self.per_actor.get(actor, 0) + later.per_actor.get(actor, 0)
                 for actor in self.per_actor.keys() | later.per_actor.keys()}
        return PoolRun(seeds, self.gauges | later.gauges, self.stopped | later.stopped, self.cause or later.cause)


class RunStopped(UserError):
    """An engine went down: the job ends with its cause in one line, and a rerun does what is left."""


def evolve_buckets(ray, cfg: EvolveConfig, done: frozenset[int]) -> PoolRun:
    """Stream the seeds of unfinished buckets through the actor pool, one bucket per call."""
    with buckets_wait_for_first_actors(ray, cfg.generation):
        return _evolve_buckets(ray, cfg, done)


@contextlib.contextmanager
def buckets_wait_for_first_actors(ray, gen):
    """Ray Data hands queued buckets to whichever actor is ready first, and one actor holds max_chains
    of them: measured, the first of two hf actors took all 96 one-seed buckets and the other sat idle.
    Ray Data's own switch holds them back until the pool's first `concurrency[0]` actors are up (for
    this pool only: the driver's context is shared with the jobs after it in a pipeline)."""
    context = ray.data.DataContext.get_current()
    held = context.wait_for_min_actors_s
    if gen.concurrency[0] > 1:
        context.wait_for_min_actors_s = POOL_START_TIMEOUT_S
    try:
        yield
    finally:
        context.wait_for_min_actors_s = held


def _evolve_buckets(ray, cfg: EvolveConfig, done: frozenset[int]) -> PoolRun:
    gen, out = cfg.generation, cfg.output.path
    buckets = read_seed_buckets(cfg.seeds.path, cfg.seeds, cfg.output.buckets, done, storage.join(out, READ_COUNTS),
                                partitions=shuffle_partitions(cfg))
    # One bucket per block, materialized before the pool starts: a streaming repartition in front of
    # the pool holds a CPU per task and was measured to starve it (4 s of submission backpressure).
    buckets = buckets.repartition(target_num_rows_per_block=1).materialize()
    if buckets.count() == 0:
        return PoolRun()
    rows, read, _ = read_counts(storage.join(out, READ_COUNTS))
    calls = calls_per_actor(gen.chains_in_flight(), rows / max(len(read), 1))
    keys = {"generation": driver_api_key(gen), "judge": driver_api_key(cfg.judge) if cfg.judge else None}
    cpus, gpus = actor_resources(cfg)
    limiters = share_rate_limits(gen, cfg.judge)  # the job-wide rate limiters, owned by the driver
    with warnings.catch_warnings():
        # Ray 2.60 warns that extra remote args go away in 2.64, but has no named parameter yet for
        # a call's retries: these two stay here until the pinned Ray has one.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        stats = buckets.map_batches(
            EvolveActor, fn_constructor_kwargs={"cfg": cfg, "api_keys": keys}, batch_size=1,
            batch_format="pyarrow", num_cpus=cpus, num_gpus=gpus,
            # A call is one bucket (a retry redoes only it); an actor runs `calls` of them at once and
            # has as many queued, so that the autoscaler sees a busy pool (utilization 2 > 1.75).
            compute=ray.data.ActorPoolStrategy(min_size=gen.concurrency[0], max_size=gen.concurrency[1],
                                               max_concurrent_calls_per_actor=calls,
                                               max_tasks_in_flight_per_actor=2 * calls),
            max_restarts=-1, max_task_retries=MAX_CALL_RETRIES)
    run = collect(bucket_rows(stats), PoolRun())
    for line in format_rate_limits(limiters):
        print(f"[evolve] {line}", flush=True)
    return run


def bucket_rows(stats) -> list[dict]:
    """The pool's BUCKET_COUNTS rows (one small row per bucket); an actor that could not start fails
    the job with its cause in one line."""
    import ray

    try:
        return list(stats.iter_rows())
    except ray.exceptions.GetTimeoutError as exc:
        if "starting actors" not in str(exc):
            raise
        raise UserError(f"the evolve pool's first actors (generation.concurrency) did not all start within "
                        f"{POOL_START_TIMEOUT_S} s: the cluster cannot place them (see `ray status`)") from None
    except Exception as exc:
        cause = start_failure(exc)
        if cause is None:
            raise
        raise UserError(f"the evolve actor could not start: {cause}") from None


def collect(rows: list[dict], run: PoolRun) -> PoolRun:
    for row in rows:
        if row["stopped"] is not None:
            run.stopped.add(row["bucket"])
            run.cause = run.cause or row["stopped"]
            continue
        run.per_actor[row["actor"]] = run.per_actor.get(row["actor"], 0) + row["seeds"]
        if row["span"] >= run.gauges.get(row["actor"], {}).get("chain_seconds", -1):  # the actor's latest
            run.gauges[row["actor"]] = {"mean_chains_in_flight": row["mean_chains"], "peak_chains_in_flight": row["peak_chains"],
                                        "engine_busy_share": row["busy"], "chain_seconds": row["span"],
                                        "unused_requests": row.get("unused_requests") or 0,
                                        "unused_tokens": row.get("unused_tokens") or 0,
                                        "fallbacks_started": row.get("fallbacks_started") or 0,
                                        "fallbacks_taken": row.get("fallbacks_taken") or 0}
            if row.get("batch_rows") is not None:  # hf: rows per batched generate(), rows it carried to a later one
                run.gauges[row["actor"]] |= {"mean_batch_rows": row["batch_rows"], "released_rows": row.get("released_rows"),
                                             "engine_computing_share": row.get("computing"),
                                             "engine_on_cpu_share": row.get("on_cpu"),
                                             "prefix_cached_share": row.get("prefix_cached")}
    return run


def start_failure(exc: Exception) -> str | None:
    """The cause's last line when the pool failed because its actor's constructor raised (a bad model,
    its process dying on every start: evol/inflight.py), else None."""
    text = str(exc)
    if "creation task" not in text:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Failed)\b", line)), lines[-1])


def calls_per_actor(chains: int, seeds_per_bucket: float) -> int:
    """Buckets an actor runs at once (one per call): twice the seeds its `chains` slots take, so that the
    slots stay full while a bucket ends and the next call arrives; at least 2."""
    return max(2, math.ceil(2 * chains / max(seeds_per_bucket, 1.0)))


def shuffle_partitions(cfg: EvolveConfig) -> int:
    """Never fewer blocks out of the shuffle than the pool has actors (a block feeds one task at a time)."""
    return max(cfg.seeds.dedupe_partitions, cfg.generation.concurrency[1])


def failed_bucket_records(batch: pa.Table, out: str) -> pa.Table:
    """Buckets whose worker died on every retry: every row of them is recorded (bad seeds
    quarantined as usual, the others as errors), so that no row is lost and reruns end."""
    written = []
    for bucket, rows in seed_rows(batch):
        records = [record for row in rows for record in worker_failed_chain(row)]
        write_bucket(out, bucket, records, train_on_truncated=False)
        written.append({"bucket": bucket, "seeds": len(rows)})
    return pa.Table.from_pylist(written)

def record_failed_buckets(cfg: EvolveConfig, records_dir: str, left: frozenset[int] = frozenset()) -> int:
    """Buckets that were read but have no file (their worker died on every retry): error records.
    `left`: buckets left unwritten on purpose (their engine was down, or the budget did not start
    them), for a rerun to do."""
    _, read, _ = read_counts(storage.join(cfg.output.path, READ_COUNTS))
    failed = read - buckets_in(storage.list_files(records_dir)) - left
    if not failed:
        return 0
    every = frozenset(range(cfg.output.buckets))
    buckets = read_seed_buckets(cfg.seeds.path, cfg.seeds, cfg.output.buckets, every - failed)
    buckets.map_batches(failed_bucket_records, fn_kwargs={"out": cfg.output.path}, batch_size=1,
                        batch_format="pyarrow").materialize()
    print(f"[evolve] {len(failed)} bucket(s) failed {MAX_CALL_RETRIES + 1} times: their seeds are "
          f"recorded as {WORKER_FAILED} errors", flush=True)
    return len(failed)
