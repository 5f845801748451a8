"""Counts and rates of an evolve run, accumulated batch by batch (driver memory stays flat)."""
from __future__ import annotations

from collections import Counter, defaultdict

from evol.elimination import EQUAL, NOT_EQUAL, SKIPPED, UNPARSED
from evol.records import (CONTAMINATED, DUPLICATE, ELIMINATED, ERROR, QUARANTINED, SURVIVED, flag_is_set,
                          in_training_set)
from generation.config import GenerationConfig

SUMMARY_COLUMNS = ["round", "op", "status", "reason", "equality", "equality_method", "instruction_tokens",
                   "response_tokens", "generated_tokens", "prompt_tokens", "requests", "gen_seconds", "response_reason",
                   "response_truncated"]


def _number(value) -> float:
    """Nulls arrive as None (python rows) or NaN (numpy batches); both count as zero."""
    return 0.0 if value is None or value != value else float(value)


class SummaryBuilder:
    """`train_on_truncated`: the job's evolve.train_on_truncated_responses, so that
    `training_rows` counts exactly the rows the training set gets."""

    def __init__(self, train_on_truncated: bool = False):
        self.train_on_truncated = train_on_truncated
        self.counts: Counter = Counter()
        self.sums: defaultdict = defaultdict(float)

    def add_rows(self, rows: list[dict]) -> None:
        for row in rows:
            r, op, status = int(row["round"]), row["op"], row["status"]
            self.counts[(r, "status", status)] += 1
            self.counts[(r, "op", op, status)] += 1
            if row["reason"]:
                self.counts[(r, "reason", status, row["reason"])] += 1
            if r > 0:
                self.counts[(r, "equality", row["equality"])] += 1
                if row["equality"] not in (SKIPPED, None):
                    self.counts[(r, "equality_method", row.get("equality_method") or "text", row["equality"])] += 1
            if isinstance(row["response_reason"], str):
                self.counts[(r, "response_reason", row["response_reason"])] += 1
            if status in SURVIVED and flag_is_set(row["response_truncated"]):
                self.counts[(r, "truncated_kept")] += 1
            self.counts[(r, "training")] += in_training_set(row, self.train_on_truncated)
            for col in ("generated_tokens", "prompt_tokens", "requests", "gen_seconds"):
                self.sums[(r, col)] += _number(row[col])
            if status in SURVIVED:
                self.sums[(r, "kept_instruction_tokens")] += _number(row["instruction_tokens"])
                self.sums[(r, "kept_response_tokens")] += _number(row["response_tokens"])

    def add_batch(self, batch: dict) -> None:
        """A column batch (as from Dataset.iter_batches(batch_format='numpy'))."""
        names = list(batch)
        columns = [batch[name].tolist() if hasattr(batch[name], "tolist") else list(batch[name]) for name in names]
        self.add_rows([dict(zip(names, values)) for values in zip(*columns)])

    def _survived(self, *key) -> int:
        """Kept by the paper's rules, the records the finish stage left out of training included."""
        return sum(self.counts[(*key, status)] for status in SURVIVED)

    def _equality(self, r: int) -> dict:
        """Verdicts per way of obtaining them, and the share of checks that gave one."""
        by_method: dict = {}
        for key, n in sorted(self.counts.items()):
            if key[:2] == (r, "equality_method"):
                by_method.setdefault(key[2], {})[key[3]] = n
        checked = sum(n for verdicts in by_method.values() for n in verdicts.values())
        decided = sum(v.get(EQUAL, 0) + v.get(NOT_EQUAL, 0) for v in by_method.values())
        return {"equality_by_method": by_method, "equality_decided_share": _share(decided, checked)}

    def _round(self, r: int) -> dict:
        kept, eliminated = self._survived(r, "status"), self.counts[(r, "status", ELIMINATED)]
        errors = self.counts[(r, "status", ERROR)]
        candidates = kept + eliminated + errors
        ops = sorted({key[2] for key in self.counts if key[:2] == (r, "op")})
        reasons = {key[3]: n for key, n in self.counts.items() if key[:3] == (r, "reason", ELIMINATED)}
        error_reasons = {key[3]: n for key, n in self.counts.items() if key[:3] == (r, "reason", ERROR)}
        verdicts = {key[2]: n for key, n in sorted(self.counts.items()) if key[:2] == (r, "equality")}
        return {
            "round": r, "candidates": candidates, "kept": kept, "eliminated": eliminated, "errors": errors,
            "pass_rate": round(kept / candidates, 4) if candidates else None,
            "by_operation": {op: _rate(self._survived(r, "op", op),
                                       self._survived(r, "op", op) + self.counts[(r, "op", op, ELIMINATED)]
                                       + self.counts[(r, "op", op, ERROR)])
                             for op in ops},
            "eliminated_by_rule": dict(sorted(reasons.items())),
            "errors_by_reason": dict(sorted(error_reasons.items())),
            "rule_share_of_candidates": {k: round(v / candidates, 4) for k, v in sorted(reasons.items())},
            "equality_verdicts": verdicts,
            "equality_unparsed_share": _share(verdicts.get(UNPARSED, 0),
                                              sum(n for v, n in verdicts.items() if v != SKIPPED)),
            **self._equality(r),
            "duplicates": self.counts[(r, "status", DUPLICATE)],
            "contaminated": self.counts[(r, "status", CONTAMINATED)],
            "kept_responses_truncated": self.counts[(r, "truncated_kept")],
            "mean_kept_instruction_tokens": _mean(self.sums[(r, "kept_instruction_tokens")], kept),
            "mean_kept_response_tokens": _mean(self.sums[(r, "kept_response_tokens")], kept),
            "requests": int(self.sums[(r, "requests")]),
            "generated_tokens": int(self.sums[(r, "generated_tokens")]),
            "prompt_tokens": int(self.sums[(r, "prompt_tokens")]),
            "generation_seconds": round(self.sums[(r, "gen_seconds")], 2),
        }

    def build(self, wall_seconds: float, this_run: tuple[int, int] | None = None) -> dict:
        """`this_run`: (requests, generated tokens) of the buckets this run wrote, which the rates are
        of; None: every record is this run's. A resumed run reads the earlier runs' records too."""
        rounds = sorted({key[0] for key in self.counts})
        used = self._survived(0, "status")
        quarantined = self.counts[(0, "status", QUARANTINED)]
        seed_errors = self.counts[(0, "status", ERROR)]
        per_round = [self._round(r) for r in rounds if r > 0]
        requests = sum(int(self.sums[(r, "requests")]) for r in rounds)
        generated = sum(int(self.sums[(r, "generated_tokens")]) for r in rounds)
        kept = sum(x["kept"] for x in per_round)
        truncated = sum(self.counts[(r, "truncated_kept")] for r in rounds)
        run_requests, run_generated = this_run if this_run is not None else (requests, generated)
        return {
            "seeds": {"read": used + quarantined + seed_errors, "used": used, "quarantined": quarantined,
                      "errors": seed_errors,
                      "errors_by_reason": {key[3]: n for key, n in sorted(self.counts.items())
                                           if key[:3] == (0, "reason", ERROR)},
                      "quarantined_by_reason": {key[3]: n for key, n in sorted(self.counts.items())
                                                if key[:3] == (0, "reason", QUARANTINED)},
                      "responses_generated": int(self.sums[(0, "requests")]),
                      "responses_rejected": {key[2]: n for key, n in sorted(self.counts.items())
                                             if key[:2] == (0, "response_reason")}},
            "candidates": sum(x["candidates"] for x in per_round),
            "kept": kept, "eliminated": sum(x["eliminated"] for x in per_round),
            "errors": sum(x["errors"] for x in per_round),
            "training_rows": sum(self.counts[(r, "training")] for r in rounds),
            "removed_from_training": {
                **{status: sum(self.counts[(r, "status", status)] for r in rounds) for status in (DUPLICATE, CONTAMINATED)},
                "by_round": [{"round": r, DUPLICATE: self.counts[(r, "status", DUPLICATE)],
                              CONTAMINATED: self.counts[(r, "status", CONTAMINATED)]} for r in rounds]},
            "responses_truncated": {"kept_rows": used + kept, "truncated": truncated,
                                    "share": _share(truncated, used + kept),
                                    "in_training_set": self.train_on_truncated},
            "rounds": per_round,
            "requests": requests, "generated_tokens": generated,
            "this_run": {"requests": run_requests, "generated_tokens": run_generated},
            "wall_seconds": round(wall_seconds, 2),
            "requests_per_second": round(run_requests / wall_seconds, 3) if wall_seconds else None,
            "generated_tokens_per_second": round(run_generated / wall_seconds, 2) if wall_seconds else None,
        }

    def cost(self, per_engine: float = 1.0, reserved: float | None = None, price: float | None = None) -> dict:
        """`cost_summary` of the rows added so far (see there for the arguments)."""
        rounds = sorted({key[0] for key in self.counts})
        return cost_summary({r: self.sums[(r, "gen_seconds")] for r in rounds},
                            {r: self._survived(r, "status") for r in rounds}, per_engine, reserved, price)


# Cost. A record's `gen_seconds` is its requests' share of their engine's busy time (generation/
# types.py BusyClock: while n requests are in flight each is charged dt / n), so the records of a
# round add up to the time the engines worked for it, whatever the concurrency. One engine runs in
# each actor of the pool and holds the GPUs the actor reserves (num_gpus; vllm: tensor_parallel_size).
# On CPU (num_gpus 0) an actor's engine counts as one accelerator: the figures are engine-seconds,
# to be priced per engine-hour (e.g. a CPU node's price / the actors it runs).


def accelerators_per_engine(gen: GenerationConfig) -> float:
    """Accelerators one actor's engine holds: its GPUs, or 1 (the engine itself) on CPU."""
    return gen.num_gpus if gen.num_gpus > 0 else 1.0


def reserved_accelerator_seconds(gen: GenerationConfig, wall_seconds: float, actors_seen: int) -> float | None:
    """At most what the pool held in this run: the stage's wall time (seed reading, model loads and
    scale-up included) x the actors that ran (at least the pool's min size, at most its max) x
    accelerators per actor. None for an OpenAI-compatible writer: the pool holds no accelerator
    (its time is the endpoint's, billed by the endpoint)."""
    if gen.backend == "openai":
        return None
    low, high = gen.concurrency
    return wall_seconds * max(low, min(actors_seen, high)) * accelerators_per_engine(gen)


def cost_summary(seconds_by_round: dict[int, float], kept_by_round: dict[int, int], per_engine: float = 1.0,
                 reserved: float | None = None, price: float | None = None) -> dict:
    """Accelerator-seconds per round (round 0: the seeds' generated answers, `kept` = seeds used) and
    per kept evolved instruction (rounds 1..M); `money` prices the accelerator-seconds (the engine
    time the work used; a rented pool bills up to `reserved` x price).

    `seconds_by_round`: summed gen_seconds; `per_engine`: accelerators_per_engine; `reserved`:
    reserved_accelerator_seconds; `price`: per accelerator-hour."""
    spent = {r: _number(seconds) * per_engine for r, seconds in seconds_by_round.items()}
    total = sum(spent.values())
    evolved = sum(n for r, n in kept_by_round.items() if r > 0)
    return {
        "accelerator_seconds": round(total, 3),
        "reserved_accelerator_seconds": None if reserved is None else round(reserved, 3),
        "per_kept_instruction": round(total / evolved, 4) if evolved else None,
        "price_per_accelerator_hour": price,
        "money": None if price is None else round(total / 3600 * price, 6),
        "per_round": [{"round": r, "accelerator_seconds": round(spent[r], 3), "kept": kept_by_round.get(r, 0),
                       "per_kept": round(spent[r] / kept_by_round[r], 4) if kept_by_round.get(r) else None}
                      for r in sorted(spent)],
    }


def _share(part: int, total: int) -> float | None:
    return round(part / total, 4) if total else None


def _rate(kept: int, total: int) -> dict:
    return {"candidates": total, "kept": kept, "pass_rate": round(kept / total, 4) if total else None}


def _mean(total: float, count: int) -> float | None:
    return round(total / count, 1) if count else None


def format_summary(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = [f"seeds: read {seeds['read']} = used {seeds['used']} + quarantined {seeds['quarantined']}"
             + (f" {seeds['quarantined_by_reason']}" if seeds["quarantined"] else "")
             + f" + errors {seeds['errors']}" + (f" {seeds['errors_by_reason']}" if seeds["errors"] else ""),
             f"candidates: {summary['candidates']} = kept {summary['kept']} + eliminated {summary['eliminated']} "
             f"+ errors {summary['errors']}; "
             f"training rows {summary['training_rows']}",
             _response_line(summary),
             f"{'round':>5} {'cand':>6} {'kept':>6} {'pass':>6} {'req':>6} {'gen_tok':>8} {'gen_s':>8} {'unparsed':>8}  eliminated by rule"]
    for r in summary["rounds"]:
        rate, unparsed = (_percent(r[key]) for key in ("pass_rate", "equality_unparsed_share"))
        lines.append(f"{r['round']:>5} {r['candidates']:>6} {r['kept']:>6} {rate:>6} {r['requests']:>6} "
                     f"{r['generated_tokens']:>8} {r['generation_seconds']:>8.1f} {unparsed:>8}  "
                     f"{r['eliminated_by_rule']}"
                     + (f" errors {r['errors_by_reason']}" if r["errors"] else ""))
    ops: dict = defaultdict(lambda: [0, 0])
    for r in summary["rounds"]:
        for op, stats in r["by_operation"].items():
            ops[op][0] += stats["kept"]
            ops[op][1] += stats["candidates"]
    lines.append("pass rate by operation: " + ", ".join(
        f"{op} {kept}/{total}" for op, (kept, total) in sorted(ops.items())))
    lines.extend(_quality_lines(summary))
    run = summary.get("this_run", summary)
    earlier = "" if run["requests"] == summary["requests"] else (
        f" (of {summary['requests']} requests and {summary['generated_tokens']} tokens in all: the rest are the "
        "buckets of earlier runs)")
    lines.append(f"{run['requests']} requests, {run['generated_tokens']} tokens generated in "
                 f"{summary['wall_seconds']} s ({summary['requests_per_second']} req/s, "
                 f"{summary['generated_tokens_per_second']} tok/s){earlier}")
    if "cost" in summary:
        lines.append(format_cost(summary["cost"]))
    if "accounting" in summary:
        check = summary["accounting"]
        lines.append(f"accounting: {check['input_rows']} input rows read, {check['round0_records']} round-0 records, "
                     f"{check['chain_problems']} unended chains, {len(check.get('unread_files', []))} files never read: "
                     f"{'OK' if check['ok'] else 'MISMATCH'}")
    if summary.get("seeds_per_actor"):
        lines.append("seeds evolved per actor (this run): " + ", ".join(
            f"{actor} {n}" for actor, n in sorted(summary["seeds_per_actor"].items())))
    return "\n".join(lines)


def _quality_lines(summary: dict) -> list[str]:
    """Equality verdicts per method, and what the finish stage removed from the training set."""
    methods: dict = defaultdict(lambda: defaultdict(int))
    for r in summary["rounds"]:
        for method, verdicts in r.get("equality_by_method", {}).items():
            for verdict, n in verdicts.items():
                methods[method][verdict] += n
    checked = sum(n for verdicts in methods.values() for n in verdicts.values())
    decided = sum(v[EQUAL] + v[NOT_EQUAL] for v in methods.values())
    lines = [f"equality verdicts: {decided}/{checked} decided ({_percent(_share(decided, checked))}); " + "; ".join(
        f"{method}: " + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
        for method, verdicts in sorted(methods.items()))] if checked else []
    removed = summary.get("removed_from_training")
    if removed is not None:
        per_round = ", ".join(f"round {r['round']} {r[DUPLICATE]}" for r in removed["by_round"] if r[DUPLICATE])
        lines.append(f"removed from the training set: {removed[DUPLICATE]} near-duplicates"
                     + (f" ({per_round})" if per_round else "") + f", {removed[CONTAMINATED]} contaminated"
                     + "".join(f"; {name} {n}" for name, n in summary.get("decontamination", {})
                               .get("contaminated_by_set", {}).items()))
    return lines


def format_cost(cost: dict) -> str:
    """One line: engine time spent, per kept instruction, what the pool held, money when priced."""
    per_kept = "-" if cost["per_kept_instruction"] is None else f"{cost['per_kept_instruction']:.3f}"
    reserved = cost["reserved_accelerator_seconds"]
    held = "" if reserved is None else f"; the pool held at most {reserved:.1f} accelerator-s this run"
    money = ("; no price (cost.price_per_accelerator_hour)" if cost["price_per_accelerator_hour"] is None
             else f"; money {cost['money']:.4f} at {cost['price_per_accelerator_hour']:g} per accelerator-hour")
    return (f"cost: {cost['accelerator_seconds']:.1f} accelerator-s of engine time, {per_kept} per kept "
            f"instruction{held}{money}")


def _response_line(summary: dict) -> str:
    cut, rejected = summary["responses_truncated"], summary["seeds"]["responses_rejected"]
    share = _percent(cut["share"])
    where = "trained on" if cut["in_training_set"] else "kept out of the training set"
    return (f"responses cut by max_tokens: {cut['truncated']}/{cut['kept_rows']} kept rows ({share}), {where}; "
            f"generated seed answers rejected: {sum(rejected.values())}" + (f" {rejected}" if rejected else ""))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
