"""The evolve job's Ray Data graph: seeds -> buckets -> the actor pool -> one row of counts per bucket,
and the record of buckets whose worker died on every retry.
"""
from __future__ import annotations

import pyarrow as pa

from common import storage
from evol.actor import EvolveActor
from evol.config import EvolveConfig
from evol.output import write_bucket
from evol.reading import READ_COUNTS, read_counts, read_seed_buckets, seed_rows
from evol.records import ERROR, empty_record
from evol.resume import buckets_in
from evol.rounds import quarantine_record
from generation import driver_api_key
from generation.ratelimit import format_rate_limits, share_rate_limits

WORKER_FAILED = "worker_failed"

# A call whose worker dies is retried this often, then its buckets are recorded as errors. The
# actor itself restarts without limit: Ray Data never replaces a dead actor of its pool (it
# assumes restarts "indefinitely until execution finishes", actor_pool_map_operator.py), and a
# pool whose only actor is dead waits forever. Measured: max_restarts=2 hung after a poison seed.
MAX_CALL_RETRIES = 2

def evolve_buckets(ray, cfg: EvolveConfig, done: frozenset[int]) -> dict[str, int]:
    """Stream the seeds of unfinished buckets through the actor pool; rows per actor."""
    gen, out = cfg.generation, cfg.output.path
    buckets = read_seed_buckets(cfg.seeds.path, cfg.seeds, cfg.output.buckets, done, storage.join(out, READ_COUNTS))
    keys = {"generation": driver_api_key(gen), "judge": driver_api_key(cfg.judge) if cfg.judge else None}
    limiters = share_rate_limits(gen, cfg.judge)  # api: the job-wide rate limiters, owned by the driver
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
    for line in format_rate_limits(limiters):  # api
        print(f"[evolve] {line}", flush=True)
    return per_actor

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

def record_failed_buckets(cfg: EvolveConfig, records_dir: str, over_budget: frozenset[int] = frozenset()) -> int:
    """Buckets that were read but have no file (their worker died on every retry): error records.
    `over_budget`: buckets the budget did not start (not failed: a rerun does them)."""
    _, read, _ = read_counts(storage.join(cfg.output.path, READ_COUNTS))
    failed = read - buckets_in(storage.list_files(records_dir)) - over_budget
    if not failed:
        return 0
    every = frozenset(range(cfg.output.buckets))
    buckets = read_seed_buckets(cfg.seeds.path, cfg.seeds, cfg.output.buckets, every - failed)
    buckets.map_batches(failed_bucket_records, fn_kwargs={"out": cfg.output.path}, batch_size=1,
                        batch_format="pyarrow").materialize()
    print(f"[evolve] {len(failed)} bucket(s) failed {MAX_CALL_RETRIES + 1} times: their seeds are "
          f"recorded as {WORKER_FAILED} errors", flush=True)
    return len(failed)
