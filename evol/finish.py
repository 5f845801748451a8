"""The end of an evolve run: summary, cost and accounting read back from the bucket files, one at a time.
"""
from __future__ import annotations

import pyarrow.parquet as pq

from common import storage
from evol.accounting import accounting, chain_problems
from evol.config import EvolveConfig
from evol.output import record_files, training_file_check
from evol.reading import READ_COUNTS, read_counts, unread_files
from evol.resume import buckets_in
from evol.summary import (
    SummaryBuilder,
    accelerators_per_engine,
    reserved_accelerator_seconds,
)


def summarize(cfg: EvolveConfig, records_dir: str, wall_seconds: float, per_actor: dict[str, int],
              left_for_later: int = 0, earlier: frozenset[int] = frozenset()) -> dict:
    """Summary, cost and accounting in one pass, a bucket file at a time (driver memory: one bucket).
    `per_actor`: seeds evolved per actor in this run (the actors the pool held); `left_for_later`:
    input rows of the buckets the budget did not start; `earlier`: buckets an earlier run wrote and
    this one skipped (their requests are not this run's, nor in its rates)."""
    builder, problems, round0 = SummaryBuilder(cfg.evolve.train_on_truncated_responses), [], 0
    run_requests = run_generated = 0
    for path in record_files(records_dir):
        filesys, inner = storage.filesystem(path)
        rows = pq.read_table(inner, filesystem=filesys).to_pylist()
        builder.add_rows(rows)
        problems += chain_problems(rows, cfg.evolve.rounds)
        round0 += sum(row["round"] == 0 for row in rows)
        if not buckets_in([path]) & earlier:
            run_requests += sum(row["requests"] or 0 for row in rows)
            run_generated += sum(row["generated_tokens"] or 0 for row in rows)
    summary = builder.build(wall_seconds, (run_requests, run_generated))
    summary["cost"] = builder.cost(accelerators_per_engine(cfg.generation),
                                   reserved_accelerator_seconds(cfg.generation, wall_seconds, len(per_actor)),
                                   cfg.cost.price_per_accelerator_hour)
    input_rows, _, counted = read_counts(storage.join(cfg.output.path, READ_COUNTS))
    unread = unread_files(cfg.seeds.path, counted) if cfg.seeds.limit is None else []
    file_rows, orphans = training_file_check(cfg.output.path)
    summary["accounting"] = accounting(input_rows - left_for_later, round0, problems, unread,
                                       training=(summary["training_rows"], file_rows, orphans))
    return summary
