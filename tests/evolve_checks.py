"""Invariants every evolve run must hold, whatever the backend: shared by the Ray tests."""
from __future__ import annotations

import pandas as pd

from evol.records import SURVIVED


def assert_counts_and_lineage(records: pd.DataFrame, summary: dict, seeds: int, rounds: int) -> None:
    """One round-0 record per seed; per round one candidate per live chain; every parent exists and
    following parents ends at the root seed; the summary's counts are the records' counts."""
    assert records["id"].is_unique
    assert len(records[records["round"] == 0]) == seeds == summary["seeds"]["read"]
    live = int(records[records["round"] == 0]["status"].isin(SURVIVED).sum())
    for r in range(1, rounds + 1):
        this_round = records[records["round"] == r]
        assert len(this_round) == live, f"round {r}: {len(this_round)} candidates for {live} live chains"
        live -= int((this_round["status"] == "error").sum())
    by_id = records.set_index("id")
    for _, row in records[records["round"] > 0].iterrows():
        parent = by_id.loc[row["parent_id"]]
        assert parent["status"] in SURVIVED and parent["round"] < row["round"]
        node = row
        while isinstance(node["parent_id"], str):
            node = by_id.loc[node["parent_id"]]
        assert node["round"] == 0 and node.name == row["root_id"]
    assert records[records["status"].isin(["eliminated", "error"])]["reason"].notna().all()
    assert records[records["status"].isin(SURVIVED)]["reason"].isna().all()
    candidates = records[records["round"] > 0]
    assert summary["candidates"] == len(candidates) == summary["kept"] + summary["eliminated"] + summary["errors"]
    assert summary["kept"] == int(candidates["status"].isin(SURVIVED).sum())
    assert summary["requests"] == int(records["requests"].fillna(0).sum())
