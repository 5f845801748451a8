"""The evolve pool's actor: one generator (and judge) per actor for the whole job, every seed's chain
a coroutine of its own, each bucket written the moment its last chain ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import pyarrow as pa

from evol.breaker import CircuitBreaker
from evol.budget import BucketBudget
from evol.config import EvolveConfig
from evol.inflight import POISON, SUSPECT, InFlight
from evol.output import read_bucket, write_bucket
from evol.preflight import check_prompt_budget
from evol.reading import seed_rows
from evol.records import ERROR, KEPT
from evol.rounds import (Roles, chain_of, chains_by_root, is_complete, records_made, run_chain,
                         worker_failed_chain)
from generation.types import EngineDown, Secret

# One row per bucket a call was given: its counts and the actor's gauges so far, or `stopped` (why
# it was left unwritten).
BUCKET_COUNTS = pa.schema([("bucket", pa.int64()), ("seeds", pa.int64()), ("records", pa.int64()),
                           ("kept", pa.int64()), ("errors", pa.int64()), ("actor", pa.string()),
                           ("mean_chains", pa.float64()), ("peak_chains", pa.int64()), ("busy", pa.float64()), ("span", pa.float64()),
                           ("batch_rows", pa.float64()), ("released_rows", pa.int64()), ("computing", pa.float64()),
                           ("on_cpu", pa.float64()),
                           ("prefix_cached", pa.float64()),
                           ("unused_requests", pa.int64()), ("unused_tokens", pa.int64()),
                           ("fallbacks_started", pa.int64()), ("fallbacks_taken", pa.int64()),
                           ("stopped", pa.string())])


class ChainSlots:
    """At most `size` chains in flight, first come first served, with the time-weighted mean and the
    peak of how many were in flight from the first chain's start to the last chain's end. The mean
    counts the drain at the end (fewer chains left than slots) as well: a run of few seeds, or of
    chains of very different lengths, keeps fewer chains in flight on average than its peak."""

    def __init__(self, size: int):
        self.size, self.in_flight, self.area, self.peak = size, 0, 0.0, 0
        self.first: float | None = None
        self.last = 0.0
        self._free = asyncio.Semaphore(size)

    def _change(self, delta: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.area += self.in_flight * (now - self.last) if self.in_flight else 0.0
        self.last, self.in_flight = now, self.in_flight + delta
        self.peak = max(self.peak, self.in_flight)

    def span(self) -> float:
        return self.last - self.first if self.first is not None else 0.0

    def mean(self) -> float:
        return self.area / self.span() if self.span() > 0 else float(self.peak)

    @contextlib.asynccontextmanager
    async def slot(self):
        async with self._free:
            self._change(+1)
            try:
                yield
            finally:
                self._change(-1)


class EvolveActor:
    """Ray Data async callable class over BUCKET_SCHEMA rows (one bucket per call); writes each bucket's
    records and yields one BUCKET_COUNTS row per bucket.

    Every seed's chain is its own coroutine; `generation.max_chains` of them are in flight per actor,
    across every bucket and call the actor holds, so the engine always has requests to batch.
    """

    def __init__(self, cfg: EvolveConfig, api_keys: dict[str, Secret | None]):
        import ray

        from generation import build_generator

        self.cfg, self.inflight = cfg, InFlight(cfg.output.path)
        actor_id = ray.get_runtime_context().get_actor_id()
        self.inflight.actor_starting(actor_id, f"the {cfg.generation.backend} engine of {cfg.generation.model}")
        writer = build_generator(cfg.generation, api_keys["generation"])
        judge = build_generator(cfg.judge, api_keys["judge"]) if cfg.judge is not None else writer
        # The driver may not have read a hub model's tokenizer: never cut a template's rules away.
        check_prompt_budget(cfg, getattr(writer.inner, "tokenizer", None), getattr(judge.inner, "tokenizer", None))
        self.inflight.actor_ready(actor_id)
        limit = cfg.evolve.engine_failure_limit
        self.breakers = [CircuitBreaker(writer, limit, "generation")]
        if judge is not writer:
            self.breakers.append(CircuitBreaker(judge, limit, "judge"))
        self.roles = Roles(writer=self.breakers[0], judge=self.breakers[-1])
        self.engine_clock, self.engine = writer.clock, writer.inner
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        self.started, self.seeds_done = time.perf_counter(), 0
        self.slots = ChainSlots(cfg.generation.chains_in_flight())
        self.suspects = asyncio.Lock()  # buckets that were in flight when a worker died run one at a time
        self.budget = BucketBudget(cfg)  # cost.max_money / cost.max_tokens, all runs of the folder together

    def stopped(self) -> str | None:
        return next((b.cause for b in self.breakers if b.cause is not None), None)

    async def _chain(self, row: dict, earlier: list[dict]) -> list[dict]:
        if is_complete(earlier, self.cfg.evolve.retry_errors):
            return earlier
        async with self.slots.slot():
            return await run_chain(row, self.roles, self.cfg.evolve, self.cfg.seeds.max_instruction_tokens, earlier)

    async def _run(self, bucket: int, rows: list[dict], mine: list[list[dict]], todo: list[bool]) -> list | None:
        """The bucket's chains, or None when the engine went down (nothing of them is to be written). A
        bucket found in flight when a worker died runs as the only suspect; one that died again as the
        only suspect holds the poison: its unfinished chains are recorded as worker_failed, not run."""
        state = await asyncio.to_thread(self.inflight.state, bucket)
        if state == POISON:
            return [worker_failed_chain(row, chain, self.cfg.evolve) if redo else chain
                    for row, chain, redo in zip(rows, mine, todo)]
        async with self.suspects if state == SUSPECT else contextlib.nullcontext():
            await asyncio.to_thread(self.inflight.start, bucket, state == SUSPECT)
            chains = await asyncio.gather(*(self._chain(row, chain) for row, chain in zip(rows, mine)),
                                          return_exceptions=True)
            if state == SUSPECT:  # it survived alone: cleared before the next suspect runs, as its write may
                await asyncio.to_thread(self.inflight.start, bucket, False)  # not end before that one dies
        failed = [exc for exc in chains if isinstance(exc, BaseException)]
        if any(not isinstance(exc, EngineDown) for exc in failed):
            raise next(exc for exc in failed if not isinstance(exc, EngineDown))
        return None if failed else chains

    async def _bucket(self, bucket: int, rows: list[dict]) -> dict:
        """The bucket's chains, each going on from what an earlier run or try wrote of it (nothing is
        redone: a bucket a retried call finds complete is not written again). A bucket the budget
        refuses is left unwritten (seeds 0) for a rerun with a higher budget."""
        if self.stopped():
            return {"bucket": bucket, "actor": self.actor, "stopped": self.stopped()}
        earlier = chains_by_root(await asyncio.to_thread(read_bucket, self.cfg.output.path, bucket))
        mine = [chain_of(row, earlier) for row in rows]
        todo = [not is_complete(chain, self.cfg.evolve.retry_errors) for chain in mine]
        if any(todo) and not await self.budget.admit(bucket, sum(todo), 0 if earlier else len(rows)):
            return self._counts(bucket, seeds=0, records=[])
        chains = await self._run(bucket, rows, mine, todo) if any(todo) or not earlier else mine
        if chains is None:  # the engine is down: leave the bucket unwritten for a rerun
            return {"bucket": bucket, "actor": self.actor, "stopped": self.stopped()}
        records = [record for chain in chains for record in chain]
        if any(todo) or not earlier:
            await asyncio.to_thread(write_bucket, self.cfg.output.path, bucket, records,
                                    self.cfg.evolve.train_on_truncated_responses)
            await asyncio.to_thread(self.inflight.finish, bucket)
            # what this call made: a retried chain returns the finished part an earlier run wrote (and
            # spent_so_far counted) ahead of its new rounds
            self.budget.settle(bucket, [r for chain, was, redo in zip(chains, mine, todo) if redo
                                        for r in records_made(chain, was)])
            self.seeds_done += sum(todo)
        return self._counts(bucket, seeds=sum(todo), records=records)

    def _counts(self, bucket: int, seeds: int, records: list[dict]) -> dict:
        span = self.slots.span()
        busy = self.engine_clock.busy / span if span else 0.0
        computing = getattr(self.engine, "worker_seconds", None)  # hf: its worker thread's compute time
        return {"bucket": bucket, "seeds": seeds, "records": len(records), "actor": self.actor,
                "kept": sum(r["status"] == KEPT and r["round"] > 0 for r in records),
                "errors": sum(r["status"] == ERROR for r in records),
                "mean_chains": round(self.slots.mean(), 2), "peak_chains": self.slots.peak, "busy": round(min(busy, 1.0), 3),
                "span": round(span, 3), "batch_rows": _rounded(getattr(self.engine, "mean_batch_rows", None)),
                "released_rows": getattr(self.engine, "released_rows", None),
                "computing": round(min(computing / span, 1.0), 3) if computing is not None and span else None,
                "on_cpu": _rounded(getattr(self.engine, "on_cpu_share", None)),
                "prefix_cached": _rounded(getattr(self.engine, "prefix_cached_share", None)),
                "unused_requests": self.roles.unused.requests, "unused_tokens": self.roles.unused.generated_tokens,
                "fallbacks_started": self.roles.fallbacks.started, "fallbacks_taken": self.roles.fallbacks.taken}

    async def __call__(self, batch: pa.Table) -> pa.Table:
        done = await asyncio.gather(*(self._bucket(b, rows) for b, rows in seed_rows(batch)))
        for row in done:
            print(f"[evolve] bucket {row['bucket']}: " + (f"left unwritten: {row['stopped']}" if row.get("stopped") else
                  f"{row['seeds']} seed(s) evolved, {row['kept']} candidates kept ({self.seeds_done} seeds by "
                  f"{self.actor} in {time.perf_counter() - self.started:.0f} s, {row['mean_chains']:.1f} chains in "
                  f"flight on average)"), flush=True)
        return pa.Table.from_pylist(done, schema=BUCKET_COUNTS)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
