"""The end-of-job check that nothing was lost: every input row one round-0 record, every chain ended."""
from __future__ import annotations

from collections import defaultdict

from evol.records import ERROR, SURVIVED


def chain_problems(rows: list[dict], rounds: int) -> list[str]:
    """Problems among one bucket's records (all records of a seed share its bucket).

    A kept seed's chain must have a candidate for each round 1..k in order, and end at round
    `rounds` or with an error record; every seed has exactly one round-0 record. A seed the finish
    stage marked duplicate or contaminated was used all the same (records.SURVIVED)."""
    by_root: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_root[row["root_id"]].append(row)
    problems = []
    for root, records in by_root.items():
        records.sort(key=lambda r: r["round"])
        starts = [r for r in records if r["round"] == 0]
        if len(starts) != 1:
            problems.append(f"{root}: {len(starts)} round-0 records")
            continue
        chain = records[1:]
        if [r["round"] for r in chain] != list(range(1, len(chain) + 1)):
            problems.append(f"{root}: rounds {[r['round'] for r in chain]}")
        elif starts[0]["status"] in SURVIVED and len(chain) != rounds and (not chain or chain[-1]["status"] != ERROR):
            problems.append(f"{root}: chain stopped after round {len(chain)} of {rounds} without an error")
        elif starts[0]["status"] not in SURVIVED and chain:
            problems.append(f"{root}: a {starts[0]['status']} seed has candidates")
    return problems


def accounting(input_rows: int, round0_records: int, problems: list[str], unread: list[str] = (),
               training: tuple[int, int, list[str]] | None = None) -> dict:
    """`unread`: seed files without a count record (their rows would be missing on both sides).
    `training`: (rows the records put in the training set, rows the training files hold, training files
    without a record file): a redone bucket must not leave a stale training file behind."""
    ok = input_rows == round0_records and not problems and not unread
    check = {"input_rows": input_rows, "round0_records": round0_records, "chain_problems": len(problems),
             "examples": problems[:5], "unread_files": list(unread)[:5]}
    if training is not None:
        expected, found, orphans = training
        check |= {"training_rows": expected, "training_file_rows": found, "orphan_training_files": orphans[:5]}
        ok = ok and expected == found and not orphans
    return check | {"ok": ok}


def accounting_error(check: dict) -> str | None:
    if check["ok"]:
        return None
    training = (f"; {check['training_rows']} training rows in the records but {check['training_file_rows']} in the "
                f"training files, files without records: {check['orphan_training_files']}"
                if "training_rows" in check else "")
    return (f"accounting check failed: {check['input_rows']} input rows read but {check['round0_records']} "
            f"round-0 records written; {check['chain_problems']} chain problem(s) {check['examples']}; "
            f"files never read: {check['unread_files']}" + training)
