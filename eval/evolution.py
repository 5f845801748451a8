"""Evolution analysis of an evolve job's output, as in the paper's look at how rounds change the data.

From the evolve records (`<output>/records/`) it reports the mean
kept instruction and response length per round (round 0 = the seeds), the candidates of each
round (kept, eliminated, errors) and each operation's pass rate with the dataset card's
definition: kept / candidates, errors counted (a chain that failed is not a pass), and the
eliminations per rule per round (every round, those with none too).
Only six small columns are read, with Arrow group-bys, so 250K records are a second's work.
The job's cost (accelerator-seconds per round and per kept instruction) comes from its
summary.json when it counted one.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from common import storage
from common.config import UserError

KEPT, ELIMINATED, ERROR = "kept", "eliminated", "error"
OUTCOMES = (KEPT, ELIMINATED, ERROR)  # what a candidate of rounds 1..M ends as
# Kept by evolution; the evolve job's finish stage may then mark a kept record duplicate or contaminated.
SURVIVED = pa.array([KEPT, "duplicate", "contaminated"])
COLUMNS = ["id", "round", "op", "status", "reason", "instruction_tokens", "response_tokens"]


def records_folder(evolve_output: str) -> str:
    records = storage.join(evolve_output, "records")
    if not storage.is_dir(records):
        raise UserError(f"evolution.output: {evolve_output} has no records/ folder (is it an evolve job's output?)")
    return records


def _records_dataset(evolve_output: str) -> ds.Dataset:
    """Both layouts the evolve job has written: bucket files (`records/bucket-NNNNN.parquet`, status
    and round as columns) and hive folders (`records/status=S/round=R/`). Files whose names start
    with '.' or '_' (unfinished temp files) are skipped."""
    records = records_folder(evolve_output)
    filesys, inner = storage.filesystem(records)
    hive = any("/status=" in f for f in storage.list_files(records))
    partitioning = ds.partitioning(pa.schema([("status", pa.string()), ("round", pa.int64())]),
                                   flavor="hive") if hive else None
    return ds.dataset(inner, filesystem=filesys, format="parquet", partitioning=partitioning)


def read_evolution_records(evolve_output: str) -> pa.Table:
    """The analysis columns of every record, `status` and `round` restored from the folder names."""
    return _records_dataset(evolve_output).to_table(columns=COLUMNS)


def read_instructions(evolve_output: str, ids: list[str]) -> dict[str, str]:
    """The instruction text of the given kept records, by id (read only for the rows asked for)."""
    where = (ds.field("status") == KEPT) & ds.field("id").isin(ids)
    table = _records_dataset(evolve_output).to_table(columns=["id", "instruction"], filter=where)
    return dict(zip(table["id"].to_pylist(), table["instruction"].to_pylist()))


def _counts(table: pa.Table, keys: list[str]) -> list[dict]:
    if table.num_rows == 0:
        return []
    return table.group_by(keys).aggregate([([], "count_all")]).to_pylist()


def lengths_by_round(table: pa.Table) -> list[dict]:
    kept = table.filter(pc.is_in(table["status"], SURVIVED))
    if kept.num_rows == 0:
        return []
    rows = kept.group_by("round").aggregate([("instruction_tokens", "mean"), ("response_tokens", "mean"),
                                             ([], "count_all")]).to_pylist()
    return sorted(({"round": r["round"], "kept": r["count_all"], "instruction_tokens": r["instruction_tokens_mean"],
                    "response_tokens": r["response_tokens_mean"]} for r in rows), key=lambda r: r["round"])


def _candidates(table: pa.Table) -> pa.Table:
    """Candidates of rounds 1..M by how evolution ended them (a duplicate or contaminated one was kept)."""
    candidates = table.filter(pc.greater(table["round"], 0))
    candidates = candidates.set_column(candidates.schema.get_field_index("status"), "status", pc.if_else(
        pc.is_in(candidates["status"], SURVIVED), KEPT, candidates["status"]))
    return candidates.filter(pc.is_in(candidates["status"], pa.array(OUTCOMES)))


def _rates(rows: list[dict], key: str) -> dict:
    """kept / eliminated / errors and the pass rate (kept / all three) per value of `key`."""
    out: dict = {}
    for row in rows:
        entry = out.setdefault(row[key], {KEPT: 0, ELIMINATED: 0, "errors": 0})
        entry["errors" if row["status"] == ERROR else row["status"]] += row["count_all"]
    for entry in out.values():
        entry["pass_rate"] = entry[KEPT] / (entry[KEPT] + entry[ELIMINATED] + entry["errors"])
    return dict(sorted(out.items()))


def pass_rate_by_operation(table: pa.Table) -> dict[str, dict]:
    return _rates(_counts(_candidates(table), ["op", "status"]), "op")


def candidates_by_round(table: pa.Table) -> dict[int, dict]:
    """Per round 1..M: kept, eliminated, errors and the pass rate, as the dataset card counts them."""
    return _rates(_counts(_candidates(table), ["round", "status"]), "round")


def eliminations_by_round(table: pa.Table) -> dict[int, dict[str, int]]:
    """Eliminations per rule of every round with candidates ({} for a round without any)."""
    out: dict[int, dict[str, int]] = {r: {} for r in candidates_by_round(table)}
    eliminated = table.filter(pc.equal(table["status"], ELIMINATED))
    for row in _counts(eliminated, ["round", "reason"]):
        out.setdefault(row["round"], {})[row["reason"] or "(none)"] = row["count_all"]
    return {r: dict(sorted(out[r].items())) for r in sorted(out)}


def status_counts(table: pa.Table) -> dict[str, int]:
    return {row["status"]: row["count_all"] for row in sorted(_counts(table, ["status"]), key=lambda r: r["status"])}


def evolution_stats(table: pa.Table) -> dict:
    """Every number of the evolution section, JSON-able (round keys become text in JSON)."""
    return {"records": table.num_rows, "status": status_counts(table), "lengths": lengths_by_round(table),
            "rounds": candidates_by_round(table), "pass_rate": pass_rate_by_operation(table),
            "eliminations": eliminations_by_round(table)}


def read_evolve_cost(evolve_output: str) -> dict | None:
    """The `cost` of the evolve job's summary.json (accelerator-seconds in all and per round, per
    kept instruction, money at a price), or None when the summary or its cost is absent: runs of
    an evolve job that did not count it are analysed without it."""
    path = storage.join(evolve_output, "summary.json")
    if not storage.exists(path):
        return None
    try:
        cost = json.loads(storage.read_text(path)).get("cost")
    except (ValueError, AttributeError):
        return None
    return cost if isinstance(cost, dict) else None


def decontamination_warning(evolve_output: str | None, testset_files: list[str]) -> str | None:
    """Why the evolve job's training rows may hold this test set's items, or None: its summary lists
    the evaluation sets it checked them against (by content hash) and this one is not among them."""
    if not evolve_output:
        return None
    path = storage.join(evolve_output, "summary.json")
    try:
        checked = json.loads(storage.read_text(path)).get("decontamination") or {}
    except (OSError, ValueError, AttributeError):
        checked = {}
    hashes = {s.get("sha256") for s in checked.get("sets", [])} if checked.get("enabled") else set()
    missing = [f for f in testset_files if _sha256(f) not in hashes]
    if not missing:
        return None
    return (f"the training data ({evolve_output}) was not checked for contamination against this test set "
            f"({', '.join(missing[:3])}): evolve's decontamination.paths should include it")


def _sha256(path: str) -> str:
    filesys, inner = storage.filesystem(path)
    with filesys.open_input_stream(inner) as stream:
        return hashlib.sha256(stream.read()).hexdigest()
