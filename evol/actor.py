"""The evolve pool's actor: one generator (and judge) per actor for the whole job, every seed's chain
a coroutine of its own, each bucket written the moment its last chain ends.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time

import pyarrow as pa

from evol.budget import BucketBudget
from evol.config import EvolveConfig
from evol.output import write_bucket
from evol.preflight import check_prompt_budget
from evol.reading import seed_rows
from evol.records import ERROR, KEPT
from evol.rounds import Roles, run_chain
from generation.types import Secret


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
        self.budget = BucketBudget(cfg)  # api: cost.max_money / cost.max_tokens
        self.slots: asyncio.Semaphore | None = None

    async def _chain(self, row: dict) -> list[dict]:
        async with self.slots:
            return await run_chain(row, self.roles, self.cfg.evolve, self.cfg.seeds.max_instruction_tokens)

    async def _bucket(self, bucket: int, rows: list[dict]) -> dict:
        if not await self.budget.admit(bucket, len(rows)):  # api: over budget: left for a rerun, not written
            return {"bucket": bucket, "seeds": 0, "records": 0, "actor": self.actor, "kept": 0, "errors": 0}
        chains = await asyncio.gather(*(self._chain(row) for row in rows))
        records = [record for chain in chains for record in chain]
        await asyncio.to_thread(write_bucket, self.cfg.output.path, bucket, records,
                                self.cfg.evolve.train_on_truncated_responses)
        self.budget.settle(bucket, records)  # api: what the bucket cost
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
