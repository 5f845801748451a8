"""The evolve pool's actor: one generator (and judge) per actor for the whole job, every seed's chain
a coroutine of its own, each bucket written the moment its last chain ends.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time

import pyarrow as pa

from evol.breaker import CircuitBreaker
from evol.config import EvolveConfig
from evol.output import read_bucket, write_bucket
from evol.preflight import check_prompt_budget
from evol.reading import seed_rows
from evol.records import ERROR, KEPT
from evol.rounds import Roles, chain_of, chains_by_root, is_complete, run_chain
from generation.types import EngineDown, Secret


# One row per bucket a call was given: its counts, or `stopped` (why it was left unwritten).
BUCKET_COUNTS = pa.schema([("bucket", pa.int64()), ("seeds", pa.int64()), ("records", pa.int64()),
                           ("kept", pa.int64()), ("errors", pa.int64()), ("actor", pa.string()),
                           ("stopped", pa.string())])


class EvolveActor:
    """Ray Data async callable class over BUCKET_SCHEMA rows (whole buckets); writes each bucket's
    records and yields one BUCKET_COUNTS row per bucket.

    Every seed's chain is its own coroutine; up to `rows_per_call x calls_per_actor` chains are in
    flight per actor, across all buckets and calls, so the engine always has requests to batch.
    """

    def __init__(self, cfg: EvolveConfig, api_keys: dict[str, Secret | None]):
        from generation import build_generator

        self.cfg = cfg
        writer = build_generator(cfg.generation, api_keys["generation"])
        judge = build_generator(cfg.judge, api_keys["judge"]) if cfg.judge is not None else writer
        # The driver may not have read a hub model's tokenizer: never cut a template's rules away.
        check_prompt_budget(cfg, getattr(writer.inner, "tokenizer", None), getattr(judge.inner, "tokenizer", None))
        limit = cfg.evolve.engine_failure_limit
        self.breakers = [CircuitBreaker(writer, limit, "generation")]
        if judge is not writer:
            self.breakers.append(CircuitBreaker(judge, limit, "judge"))
        self.roles = Roles(writer=self.breakers[0], judge=self.breakers[-1])
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        self.started, self.seeds_done = time.perf_counter(), 0
        self.slots: asyncio.Semaphore | None = None

    async def _chain(self, row: dict, earlier: list[dict]) -> list[dict]:
        if is_complete(earlier, self.cfg.evolve.retry_errors):
            return earlier
        async with self.slots:
            return await run_chain(row, self.roles, self.cfg.evolve, self.cfg.seeds.max_instruction_tokens, earlier)

    async def _bucket(self, bucket: int, rows: list[dict]) -> dict:
        """The bucket's chains, each going on from what an earlier run or try wrote of it (nothing is
        redone: a bucket a retried call finds complete is not written again)."""
        if self.stopped():
            return {"bucket": bucket, "actor": self.actor, "stopped": self.stopped()}
        earlier = chains_by_root(await asyncio.to_thread(read_bucket, self.cfg.output.path, bucket))
        mine = [chain_of(row, earlier) for row in rows]
        todo = [not is_complete(chain, self.cfg.evolve.retry_errors) for chain in mine]
        chains = await asyncio.gather(*(self._chain(row, chain) for row, chain in zip(rows, mine)),
                                      return_exceptions=True)
        down = [chain for chain in chains if isinstance(chain, BaseException)]
        if down:  # the engine is down (anything else is recorded inside the chain): leave the bucket unwritten
            if not all(isinstance(exc, EngineDown) for exc in down):
                raise next(exc for exc in down if not isinstance(exc, EngineDown))
            return {"bucket": bucket, "actor": self.actor, "stopped": self.stopped()}
        records = [record for chain in chains for record in chain]
        if any(todo) or not earlier:
            await asyncio.to_thread(write_bucket, self.cfg.output.path, bucket, records,
                                    self.cfg.evolve.train_on_truncated_responses)
            self.seeds_done += sum(todo)
        return {"bucket": bucket, "seeds": sum(todo), "records": len(records), "actor": self.actor,
                "kept": sum(r["status"] == KEPT and r["round"] > 0 for r in records),
                "errors": sum(r["status"] == ERROR for r in records)}

    def stopped(self) -> str | None:
        return next((b.cause for b in self.breakers if b.cause is not None), None)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.slots is None:
            gen = self.cfg.generation
            self.slots = asyncio.Semaphore(gen.rows_per_call * gen.calls_per_actor)
        done = await asyncio.gather(*(self._bucket(b, rows) for b, rows in seed_rows(batch)))
        written = [d for d in done if d.get("stopped") is None]
        print(f"[evolve] {sum(d['seeds'] for d in written)} seeds in {len(written)} bucket(s) written ({self.seeds_done} "
              f"seeds by {self.actor}): {sum(d['kept'] for d in written)} candidates kept, "
              f"{time.perf_counter() - self.started:.0f} s"
              + (f"; {len(done) - len(written)} bucket(s) left unwritten: {self.stopped()}" if self.stopped() else ""),
              flush=True)
        return pa.Table.from_pylist(done, schema=BUCKET_COUNTS)
