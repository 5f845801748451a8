"""From per-item judge scores to the numbers of the report. Pure: rows in, a JSON-able dict out.

pairwise: an item row holds the candidate and baseline score of each order (None when that
verdict failed). As in FastChat, an item counts only when both orders are readable (else the
judge's position bias is not cancelled for it; `require_both_orders=False` scores it on one);
its score is the mean over both orders. The headline is the paper's "% of ChatGPT": total
candidate score / total baseline score, with a bootstrap interval over items; beside it the win
rate (ties as half) with its standard error and AlpacaEval's length-controlled win rate.
single: each answer's absolute 1-10 grade; the mean per role with its standard error.
Items that could not be scored are counted by reason, never scored.
"""
from __future__ import annotations

import numpy as np

from eval.calls import GENERATION_FAILED
from eval.judge import ORDERS
from eval.length import length_controlled_win_rate, win_rate

WIN, TIE, LOSS = "win", "tie", "loss"
BANDS = (("1-4", 1, 4), ("5-7", 5, 7), ("8-10", 8, 10))
NO_CATEGORY = "(no category)"
ROLES = ("candidate", "baseline")


def outcome(candidate: float, baseline: float) -> str:
    return WIN if candidate > baseline else LOSS if candidate < baseline else TIE


def band_of(difficulty: int | None) -> str | None:
    for name, low, high in BANDS:
        if difficulty is not None and low <= difficulty <= high:
            return name
    return None


def combine_item(row: dict, require_both_orders: bool = True, disagreement_as_tie: bool = False) -> dict:
    """Mean scores over the orders, the outcome, and whether the two orders disagree. Not scored
    (outcome None) without a readable order, or with one only when both are required."""
    pairs = {o: (row[f"candidate_{o}"], row[f"baseline_{o}"]) for o in ORDERS
             if row.get(f"candidate_{o}") is not None and row.get(f"baseline_{o}") is not None}
    if not pairs or (require_both_orders and len(pairs) < len(ORDERS)):
        return {"candidate": None, "baseline": None, "outcome": None, "orders": len(pairs), "disagree": None}
    candidate = sum(c for c, _ in pairs.values()) / len(pairs)
    baseline = sum(b for _, b in pairs.values()) / len(pairs)
    disagree = len({outcome(c, b) for c, b in pairs.values()}) > 1 if len(pairs) == len(ORDERS) else None
    result = TIE if disagree and disagreement_as_tie else outcome(candidate, baseline)
    return {"candidate": candidate, "baseline": baseline, "outcome": result, "orders": len(pairs),
            "disagree": disagree}


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
    """Ratio, mean scores, win/tie/loss and win rate (ties as half, with its standard error) of judged items."""
    candidate = np.array([i["candidate"] for i in items], float)
    baseline = np.array([i["baseline"] for i in items], float)
    counts = {k: sum(i["outcome"] == k for i in items) for k in (WIN, TIE, LOSS)}
    rate, se = win_rate([i["outcome"] for i in items])
    return {"n": len(items), "ratio": score_ratio(candidate, baseline),
            "candidate_mean": float(candidate.mean()) if len(items) else None,
            "baseline_mean": float(baseline.mean()) if len(items) else None, **counts,
            "win_rate": rate, "win_rate_se": se}


def _by(items: list[dict], key, group=_group) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return {name: group(members) for name, members in sorted(groups.items())}


def _category(item: dict) -> str:
    return item["row"].get("category") or NO_CATEGORY


def answer_stats(rows: list[dict], roles=ROLES) -> dict[str, dict]:
    """Per role: answers, those cut by their token limit (`finished` false), empty ones, and the mean
    length in characters and in tokens of the answers written."""
    out = {}
    for role in roles:
        written = [r for r in rows if r.get(f"{role}_answer") is not None]
        tokens = [r[f"{role}_completion_tokens"] for r in written if r.get(f"{role}_completion_tokens") is not None]
        out[role] = {"answers": len(written), "cut": sum(r.get(f"{role}_finished") is False for r in written),
                     "empty": sum(not r[f"{role}_answer"].strip() for r in written),
                     "mean_chars": float(np.mean([len(r[f"{role}_answer"]) for r in written])) if written else None,
                     "mean_tokens": float(np.mean(tokens)) if tokens else None}
    return out


def _verdict_counts(rows: list[dict]) -> dict:
    """Failures by reason over all verdicts (two per item with answers), of which `unreadable`: the
    judge answered but gave no usable scores (the rest failed as requests), and retries."""
    failures: dict[str, int] = {}
    for row in rows:
        for order in ORDERS:
            error = row.get(f"error_{order}")
            if error:
                failures[error] = failures.get(error, 0) + 1
    total = 2 * sum(not r.get("answer_error") and not r.get("judge_error") for r in rows)
    retried = sum((row.get(f"attempts_{o}") or 0) > 1 for row in rows for o in ORDERS)
    return _failure_counts(total, failures, retried)


def _failure_counts(total: int, failures: dict[str, int], retried: int) -> dict:
    unreadable = sum(n for reason, n in failures.items() if not reason.startswith(GENERATION_FAILED))
    return {"verdicts": total, "failed": sum(failures.values()), "unreadable": unreadable,
            "failures": dict(sorted(failures.items())), "retried": retried}


def _order_view(judged: list[dict], disagreement_as_tie: bool = False) -> dict:
    both = [i for i in judged if i["disagree"] is not None]
    by_order = {}
    for order in ORDERS:
        diffs = [i["row"][f"candidate_{order}"] - i["row"][f"baseline_{order}"] for i in judged
                 if i["row"].get(f"candidate_{order}") is not None]
        by_order[order] = float(np.mean(diffs)) if diffs else None
    return {"both_orders": len(both), "disagree": sum(i["disagree"] for i in both),
            "disagreement_rate": sum(i["disagree"] for i in both) / len(both) if both else None,
            "counted_as_ties": disagreement_as_tie, "mean_difference_by_order": by_order}


def aggregate(rows: list[dict], bootstrap_samples: int = 1000, confidence: float = 0.95, seed: int = 0,
              threshold: float = 0.9, require_both_orders: bool = True, disagreement_as_tie: bool = False) -> dict:
    """Every number of the report. Rows: id, category, difficulty, answer_error, candidate_answer and
    baseline_answer (optional) and their finished / completion_tokens, answers_cut_to and judge_error
    (optional), and per order o in ORDERS: candidate_o, baseline_o, error_o, attempts_o."""
    items = [combine_item(r, require_both_orders, disagreement_as_tie) | {"row": r} for r in rows]
    judged = [i for i in items if i["outcome"] is not None]
    overall = _group(judged)
    overall["ci"] = bootstrap_interval([i["candidate"] for i in judged], [i["baseline"] for i in judged],
                                       bootstrap_samples, confidence, seed)
    lengths = ([len(i["row"].get(f"{role}_answer") or "") for i in judged] for role in ROLES)
    overall["lc_win_rate"] = length_controlled_win_rate([i["outcome"] for i in judged], *lengths)
    has_categories = any(r.get("category") is not None for r in rows)
    bands = _by([i for i in judged if band_of(i["row"].get("difficulty")) is not None],
                lambda i: band_of(i["row"]["difficulty"]))
    categories = _by(judged, _category) if has_categories else {}
    answered = [r for r in rows if not r.get("answer_error")]
    return {
        "mode": "pairwise", "items": len(rows), "answer_failures": len(rows) - len(answered),
        "judged": len(judged), "unjudged": len(answered) - len(judged),
        "one_order_only": sum(i["orders"] == 1 for i in items) if require_both_orders else 0,
        "require_both_orders": require_both_orders, "disagreement_as_tie": disagreement_as_tie,
        "overall": overall, "confidence": confidence, "bootstrap_samples": bootstrap_samples,
        "by_category": categories, "threshold": threshold,
        "categories_at_or_above": sum(g["ratio"] is not None and g["ratio"] >= threshold
                                      for name, g in categories.items() if name != NO_CATEGORY),
        "has_categories": has_categories,
        "by_band": {name: bands[name] for name, _, _ in BANDS if name in bands},
        "has_difficulty": any(r.get("difficulty") is not None for r in rows),
        "order": _order_view(judged, disagreement_as_tie), "verdicts": _verdict_counts(rows),
        "answers": answer_stats(rows), "judge_fit": judge_fit(rows),
    }


def judge_fit(rows: list[dict], keys=("answers_cut_to",), errors=("judge_error",)) -> dict:
    """How many judge prompts had their answers cut to fit (and the shortest cut, in tokens) and how
    many items could not be judged because the question alone did not fit."""
    cuts = [r[k] for r in rows for k in keys if r.get(k) is not None]
    return {"cut": len(cuts), "shortest_cut": min(cuts) if cuts else None,
            "too_long": sum(bool(r.get(k)) for r in rows for k in errors)}


def _mean_se(values: list[float]) -> dict:
    array = np.array(values, float)
    return {"n": len(array), "mean": float(array.mean()) if len(array) else None,
            "se": float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else None}


def _grades_of(rows: list[dict], role: str, key=None) -> dict:
    """Mean grade of a role with its standard error, in all and per group (`key`: row -> group or None)."""
    graded = [r for r in rows if r.get(f"{role}_score") is not None]
    groups: dict[str, list[float]] = {}
    for row in graded:
        if key is not None and key(row) is not None:
            groups.setdefault(key(row), []).append(row[f"{role}_score"])
    overall = _mean_se([r[f"{role}_score"] for r in graded])
    return overall | {"groups": {name: _mean_se(values) for name, values in sorted(groups.items())}}


def _grade_counts(rows: list[dict], roles: tuple[str, ...]) -> dict:
    failures: dict[str, int] = {}
    for row in rows:
        for role in roles:
            if row.get(f"{role}_grade_error"):
                failures[row[f"{role}_grade_error"]] = failures.get(row[f"{role}_grade_error"], 0) + 1
    total = sum(row.get(f"{role}_answer") is not None and not row.get(f"{role}_judge_error")
                for row in rows for role in roles)
    retried = sum((row.get(f"{role}_grade_attempts") or 0) > 1 for row in rows for role in roles)
    return _failure_counts(total, failures, retried)


def aggregate_single(rows: list[dict], roles: tuple[str, ...], bootstrap_samples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """single-answer grading: per role the mean 1-10 grade with its standard error, in all, per
    category and per difficulty band; with a baseline also the ratio of summed grades over the
    items graded for both, with its bootstrap interval."""
    has_categories = any(r.get("category") is not None for r in rows)
    result = {"mode": "single", "roles": list(roles), "items": len(rows), "confidence": confidence,
              "bootstrap_samples": bootstrap_samples, "has_categories": has_categories,
              "has_difficulty": any(r.get("difficulty") is not None for r in rows),
              "by_category": {role: _grades_of(rows, role, lambda r: r.get("category") or NO_CATEGORY)["groups"]
                              for role in roles} if has_categories else {},
              "by_band": {role: _grades_of(rows, role, lambda r: band_of(r.get("difficulty")))["groups"]
                          for role in roles},
              "grades": {role: _grades_of(rows, role) for role in roles}, "verdicts": _grade_counts(rows, roles),
              "answers": answer_stats(rows, roles), "answer_failures": sum(bool(r.get("answer_error")) for r in rows),
              "judge_fit": judge_fit(rows, tuple(f"{r}_cut_to" for r in roles),
                                     tuple(f"{r}_judge_error" for r in roles))}
    if "baseline" in roles:
        both = [r for r in rows if r.get("candidate_score") is not None and r.get("baseline_score") is not None]
        cand, base = ([r[f"{role}_score"] for r in both] for role in ROLES)
        result["paired"] = {"n": len(both), "ratio": score_ratio(np.array(cand, float), np.array(base, float)),
                            "ci": bootstrap_interval(cand, base, bootstrap_samples, confidence, seed)}
    return result
