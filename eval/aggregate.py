"""From per-item judge scores to the numbers of the report. Pure: rows in, a JSON-able dict out.

An item row holds the candidate and baseline score of each order (None when that verdict
failed). An item's score is the mean over its readable orders; the headline is the paper's
"% of ChatGPT": total candidate score / total baseline score, with a bootstrap interval over
items. Items whose both verdicts failed are counted, never scored.
"""
from __future__ import annotations

import numpy as np

from eval.calls import GENERATION_FAILED
from eval.judge import ORDERS

WIN, TIE, LOSS = "win", "tie", "loss"
BANDS = (("1-4", 1, 4), ("5-7", 5, 7), ("8-10", 8, 10))
NO_CATEGORY = "(none)"


def outcome(candidate: float, baseline: float) -> str:
    return WIN if candidate > baseline else LOSS if candidate < baseline else TIE


def band_of(difficulty: int | None) -> str | None:
    for name, low, high in BANDS:
        if difficulty is not None and low <= difficulty <= high:
            return name
    return None


def combine_item(row: dict) -> dict:
    """Mean scores over the readable orders, the outcome, and whether the two orders disagree."""
    pairs = {o: (row[f"candidate_{o}"], row[f"baseline_{o}"]) for o in ORDERS
             if row.get(f"candidate_{o}") is not None and row.get(f"baseline_{o}") is not None}
    if not pairs:
        return {"candidate": None, "baseline": None, "outcome": None, "orders": 0, "disagree": None}
    candidate = sum(c for c, _ in pairs.values()) / len(pairs)
    baseline = sum(b for _, b in pairs.values()) / len(pairs)
    outcomes = {outcome(c, b) for c, b in pairs.values()}
    disagree = (len(outcomes) > 1) if len(pairs) == len(ORDERS) else None
    return {"candidate": candidate, "baseline": baseline, "outcome": outcome(candidate, baseline),
            "orders": len(pairs), "disagree": disagree}


def score_ratio(candidate: np.ndarray, baseline: np.ndarray) -> float | None:
    return float(candidate.sum() / baseline.sum()) if len(candidate) and baseline.sum() > 0 else None


def bootstrap_interval(candidate, baseline, samples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the score ratio over items resampled with replacement (seeded, so a
    rerun prints the same interval). Drawn in chunks, so memory stays small for big test sets."""
    candidate, baseline = np.asarray(candidate, float), np.asarray(baseline, float)
    n = len(candidate)
    if n == 0 or samples < 1:
        return None
    rng = np.random.default_rng(seed)
    ratios = []
    chunk = max(1, 2_000_000 // n)
    for start in range(0, samples, chunk):
        index = rng.integers(0, n, size=(min(chunk, samples - start), n))
        ratios.append(candidate[index].sum(axis=1) / baseline[index].sum(axis=1))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(np.concatenate(ratios), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _group(items: list[dict]) -> dict:
    """Ratio, mean scores and win/tie/loss of a group of judged items."""
    candidate = np.array([i["candidate"] for i in items], float)
    baseline = np.array([i["baseline"] for i in items], float)
    counts = {k: sum(i["outcome"] == k for i in items) for k in (WIN, TIE, LOSS)}
    return {"n": len(items), "ratio": score_ratio(candidate, baseline),
            "candidate_mean": float(candidate.mean()) if len(items) else None,
            "baseline_mean": float(baseline.mean()) if len(items) else None, **counts}


def _by(items: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return {name: _group(group) for name, group in sorted(groups.items())}


def _verdict_counts(rows: list[dict]) -> dict:
    """Failures by reason over all verdicts (two per item with answers), of which `unreadable`: the
    judge answered but gave no usable scores (the rest failed as requests), and retries."""
    failures: dict[str, int] = {}
    for row in rows:
        for order in ORDERS:
            error = row.get(f"error_{order}")
            if error:
                failures[error] = failures.get(error, 0) + 1
    total = 2 * sum(not r.get("answer_error") for r in rows)
    retried = sum((row.get(f"attempts_{o}") or 0) > 1 for row in rows for o in ORDERS)
    unreadable = sum(n for reason, n in failures.items() if not reason.startswith(GENERATION_FAILED))
    return {"verdicts": total, "failed": sum(failures.values()), "unreadable": unreadable,
            "failures": dict(sorted(failures.items())), "retried": retried}


def _order_view(judged: list[dict]) -> dict:
    both = [i for i in judged if i["disagree"] is not None]
    by_order = {}
    for order in ORDERS:
        diffs = [i["row"][f"candidate_{order}"] - i["row"][f"baseline_{order}"] for i in judged
                 if i["row"].get(f"candidate_{order}") is not None]
        by_order[order] = float(np.mean(diffs)) if diffs else None
    return {"both_orders": len(both), "disagree": sum(i["disagree"] for i in both),
            "disagreement_rate": sum(i["disagree"] for i in both) / len(both) if both else None,
            "mean_difference_by_order": by_order}


def aggregate(rows: list[dict], bootstrap_samples: int = 1000, confidence: float = 0.95, seed: int = 0,
              threshold: float = 0.9) -> dict:
    """Every number of the report. Rows: id, category, difficulty, answer_error, candidate_answer and
    baseline_answer (optional), and per order o in ORDERS: candidate_o, baseline_o, error_o, attempts_o."""
    items = [combine_item(r) | {"row": r} for r in rows]
    judged = [i for i in items if i["outcome"] is not None]
    overall = _group(judged)
    overall["ci"] = bootstrap_interval([i["candidate"] for i in judged], [i["baseline"] for i in judged],
                                       bootstrap_samples, confidence, seed)
    categories = _by([i for i in judged if i["row"].get("category") is not None], lambda i: i["row"]["category"])
    bands = _by([i for i in judged if band_of(i["row"].get("difficulty")) is not None],
                lambda i: band_of(i["row"]["difficulty"]))
    at_or_above = sum(g["ratio"] is not None and g["ratio"] >= threshold for g in categories.values())
    return {
        "items": len(rows), "answer_failures": sum(bool(r.get("answer_error")) for r in rows),
        "judged": len(judged), "unjudged": len(rows) - len(judged) - sum(bool(r.get("answer_error")) for r in rows),
        "overall": overall, "confidence": confidence, "bootstrap_samples": bootstrap_samples,
        "by_category": categories, "threshold": threshold,
        "categories_at_or_above": at_or_above,
        "has_categories": any(r.get("category") is not None for r in rows),
        "by_band": {name: bands[name] for name, _, _ in BANDS if name in bands},
        "has_difficulty": any(r.get("difficulty") is not None for r in rows),
        "order": _order_view(judged), "verdicts": _verdict_counts(rows),
        "empty_answers": {role: sum(r.get(f"{role}_answer") is not None and not r[f"{role}_answer"].strip()
                                    for r in rows) for role in ("candidate", "baseline")},
    }
