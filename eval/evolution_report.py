"""The report's evolution section: lengths per round, candidates and pass rates (the dataset card's
definition: errors count as fails), eliminations per rule of every round, cost, judged difficulty."""
from __future__ import annotations

from eval.sections import FIGURE_EVOLUTION, num, pct


def evolution_blocks(stats: dict | None) -> list[tuple]:
    if stats is None:
        return []
    lengths = [[r["round"], r["kept"], num(r["instruction_tokens"]), num(r["response_tokens"])]
               for r in stats["lengths"]]
    rounds = [[r, v["kept"] + v["eliminated"] + v["errors"], v["kept"], v["eliminated"], v["errors"],
               pct(v["pass_rate"])] for r, v in stats.get("rounds", {}).items()]
    rates = [[op, v["kept"], v["eliminated"], v["errors"], pct(v["pass_rate"])] for op, v in stats["pass_rate"].items()]
    elim = [[r, ", ".join(f"{k}: {v}" for k, v in counts.items()) or "0"]
            for r, counts in stats["eliminations"].items()]
    return [("h2", "Evolution analysis (the evolve job's output)"),
            ("img", FIGURE_EVOLUTION, "kept length per round, pass rate per operation, eliminations per rule and "
                                      "errors per round"),
            ("table", ["round", "kept", "mean instruction tokens", "mean response tokens"], lengths),
            ("p", "Pass rate = kept / candidates, a candidate whose chain failed (an error) counting as not kept, as "
                  "in the dataset card."),
            ("table", ["round", "candidates", "kept", "eliminated", "errors", "pass rate"], rounds or [["-"] * 6]),
            ("table", ["operation", "kept", "eliminated", "errors", "pass rate"], rates),
            ("table", ["round", "eliminations per rule"], elim or [["-", "none"]])] + cost_blocks(stats.get("cost")) \
        + judged_difficulty_blocks(stats)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def cost_blocks(cost: dict | None) -> list[tuple]:
    """The evolve job's cost (its summary.json `cost`): accelerator-seconds per round (round 0: the
    seeds' generated answers, kept = seeds used) and in all, per kept evolved instruction (rounds
    1..M), and money when the evolve config gave a price. Nothing when absent."""
    if not cost:
        return []
    text = f"Evolution cost: **{_seconds(cost.get('accelerator_seconds'))} accelerator-seconds** of generation"
    if cost.get("reserved_accelerator_seconds") is not None:
        text += f" ({_seconds(cost['reserved_accelerator_seconds'])} reserved by the actors)"
    text += f", {_seconds(cost.get('per_kept_instruction'))} per kept evolved instruction"
    if cost.get("money") is not None and cost.get("price_per_accelerator_hour") is not None:
        text += (f"; at {cost['price_per_accelerator_hour']:g} per accelerator-hour that is "
                 f"**{cost['money']:.4g}** in all")
    per_round = cost.get("per_round") or []
    rows = [["0 (seed answers)" if r["round"] == 0 else r["round"], _seconds(r["accelerator_seconds"]), r["kept"],
             _seconds(r.get("per_kept"))] for r in per_round]
    evolved = sum(r["kept"] for r in per_round if r["round"] > 0)
    rows.append(["all (kept: evolved)", _seconds(cost.get("accelerator_seconds")), evolved if per_round else "n/a",
                 _seconds(cost.get("per_kept_instruction"))])
    return [("p", text + "."),
            ("table", ["round", "accelerator-seconds", "kept", "accelerator-seconds per kept"], rows)]


def judged_difficulty_blocks(stats: dict) -> list[tuple]:
    if "difficulty" not in stats:
        return [("p", "Judged difficulty per round (the paper's complexity analysis) was not asked for "
                      "(`evolution.difficulty_per_round`).")]
    rows = [[r["round"], r["rated"], r["failed"], num(r["mean"])] for r in stats["difficulty"]]
    return [("p", "Judged difficulty: the judge rated a fixed sample of each round's kept instructions from 1 to 10 "
                  "(the paper saw it rise round by round)."),
            ("table", ["round", "rated", "unreadable", "mean judged difficulty"], rows)]
