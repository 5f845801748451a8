"""report.md and a self-contained report.html from one list of blocks, so both say the same thing.

The summary (see eval.pipeline) is turned into blocks: headings, paragraphs, notes, tables and
figures. The headline ratio with its interval and a plain-words reading come first, then the
caveats, so a reader knows the result and how far to trust it within a minute.
"""
from __future__ import annotations

import base64
import html
import re

from common import storage
from eval import plots
from eval.judge import VERDICT_PREFILL

FIGURE_CATEGORIES, FIGURE_BANDS, FIGURE_EVOLUTION = "per_category.png", "win_tie_loss_by_difficulty.png", \
    "evolution.png"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def verdict_words(agg: dict) -> str:
    """The headline in plain words: what the ratio and its interval mean."""
    overall = agg["overall"]
    if overall["ratio"] is None:
        return "No item could be judged, so there is no score ratio (see *Judge reliability*)."
    low, high = overall["ci"]
    level = f"{100 * agg['confidence']:.0f}%"
    text = (f"The candidate scored **{pct(overall['ratio'])}** of the baseline's total score "
            f"({level} interval {pct(low)} to {pct(high)}; {overall['n']} of {agg['items']} items judged, each "
            "asked in both orders). ")
    if low > 1:
        text += "The whole interval is above 100%: on this test set the candidate is better than the baseline."
    elif high < 1:
        text += "The whole interval is below 100%: on this test set the candidate is worse than the baseline."
    else:
        text += "The interval includes 100%: on this test set the two models cannot be told apart."
    return text


def headline_blocks(summary: dict) -> list[tuple]:
    agg, models = summary["aggregates"], summary["models"]
    overall = agg["overall"]
    blocks = [("h1", f"Evaluation: {models['candidate']['model']} vs {models['baseline']['model']}"),
              ("p", verdict_words(agg))]
    if overall["n"]:
        blocks.append(("p", f"Wins {overall['win']}, ties {overall['tie']}, losses {overall['loss']} "
                            f"(a win: the candidate's mean score over both orders is higher). "
                            f"Mean score {num(overall['candidate_mean'])} vs {num(overall['baseline_mean'])} "
                            "out of 10."))
    if agg["has_categories"] and overall["n"]:
        blocks.append(("p", f"The candidate reached at least {100 * agg['threshold']:.0f}% of the baseline on "
                            f"**{agg['categories_at_or_above']} of {len(agg['by_category'])}** categories."))
    blocks += [("note", note) for note in summary["notes"]]
    return blocks


def setup_blocks(summary: dict) -> list[tuple]:
    models, sampling, testset = summary["models"], summary["sampling"], summary["testset"]
    rows = [[role, m["model"], m["backend"], m["prompt_format"],
             ", ".join(f"{k}={v}" for k, v in sampling["judge" if role == "judge" else "answers"].items())]
            for role, m in models.items()]
    quarantined = ", ".join(f"{k}: {v}" for k, v in testset["quarantined"].items()) or "none"
    blocks = [("h2", "Setup"),
              ("table", ["role", "model", "backend", "prompt format", "sampling"], rows),
              ("p", f"Test set `{testset['path']}`: {testset['rows']} rows read, {testset['used']} items "
                    f"evaluated, quarantined: {quarantined}."),
              ("p", "Requests: " + "; ".join(f"{name} {c['reused']} reused, {c['generated']} generated, "
                                             f"{c['failed']} failed" for name, c in reuse_counts(summary)) +
                    " (reused: cached by an earlier run with the same settings).")]
    if summary.get("seconds"):
        blocks.append(("p", "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()) + "."))
    return blocks


def reuse_counts(summary: dict) -> list[tuple[str, dict]]:
    """(what, reused/generated/failed) of every cached stage that ran."""
    out = [(f"{role} answers", counts) for role, counts in summary["answers"].items()]
    if summary.get("verdicts"):
        out.append(("verdicts", summary["verdicts"]))
    if (summary.get("evolution") or {}).get("ratings"):
        out.append(("difficulty ratings", summary["evolution"]["ratings"]))
    return out


def _outcome_rows(groups: dict[str, dict]) -> list[list]:
    return [[name, g["n"], g["win"], g["tie"], g["loss"], pct(g["ratio"])] for name, g in groups.items()]


def difficulty_blocks(agg: dict) -> list[tuple]:
    blocks = [("h2", "Win / tie / loss by difficulty")]
    if not agg["has_difficulty"]:
        return blocks + [("p", "The test set has no difficulty field, so the difficulty views are left out.")]
    if not agg["overall"]["n"]:
        return blocks + [("p", "No item was judged.")]
    groups = {f"difficulty {k}": v for k, v in agg["by_band"].items()} | {"all": agg["overall"]}
    return blocks + [("table", ["items", "n", "win", "tie", "loss", "score ratio"], _outcome_rows(groups)),
                     ("img", FIGURE_BANDS, "win, tie and loss shares per difficulty band")]


def category_blocks(agg: dict) -> list[tuple]:
    blocks = [("h2", "Per category")]
    if not agg["has_categories"]:
        return blocks + [("p", "The test set has no category field, so there is no per-category view.")]
    if not agg["by_category"]:
        return blocks + [("p", "No item was judged.")]
    rows = [[name, g["n"], pct(g["ratio"]), num(g["candidate_mean"]), num(g["baseline_mean"]),
             f"{g['win']}/{g['tie']}/{g['loss']}"]
            for name, g in sorted(agg["by_category"].items(), key=lambda kv: -kv[1]["ratio"])]
    return blocks + [("img", FIGURE_CATEGORIES, "score ratio per category"),
                     ("table", ["category", "n", "score ratio", "candidate", "baseline", "win/tie/loss"], rows)]


def _were(count: int) -> str:
    return "was" if count == 1 else "were"


def reliability_blocks(agg: dict, prefill: bool = False) -> list[tuple]:
    verdicts, order = agg["verdicts"], agg["order"]
    failures = ", ".join(f"{k}: {v}" for k, v in verdicts["failures"].items()) or "none"
    by_order = order["mean_difference_by_order"]
    return [("h2", "Judge reliability"),
            ("p", f"{verdicts['verdicts']} verdicts asked (every item twice, answers swapped); {verdicts['retried']} "
                  f"{_were(verdicts['retried'])} unreadable and asked again with a format reminder; "
                  + (f"{verdicts['failed']} gave no usable scores ({failures}) and {_were(verdicts['failed'])} "
                     "counted as failures, never guessed. " if verdicts["failed"] else "all gave usable scores. ")
                  + f"Items with no readable verdict: {agg['unjudged']}; items without both answers: "
                    f"{agg['answer_failures']}."),
            ("p", f"The two orders disagreed on the winner for {order['disagree']} of {order['both_orders']} items "
                  f"({pct(order['disagreement_rate'])}). Mean candidate minus baseline score with the candidate "
                  f"shown first: {num(by_order['cb'])}; shown second: {num(by_order['bc'])} "
                  "(a gap between the two is the judge's position bias, which judging both orders cancels).")] \
        + ([("p", f"Every verdict was started with `{VERDICT_PREFILL}` for the judge (`judge_prefill`), so a small "
                  "judge that ignores the scoring format still writes two numbers; the numbers are its own, "
                  "never filled in, but may mean little.")] if prefill else [])


def evolution_blocks(stats: dict | None) -> list[tuple]:
    if stats is None:
        return []
    lengths = [[r["round"], r["kept"], num(r["instruction_tokens"]), num(r["response_tokens"])]
               for r in stats["lengths"]]
    rates = [[op, v["kept"], v["eliminated"], pct(v["pass_rate"])] for op, v in stats["pass_rate"].items()]
    elim = [[r, ", ".join(f"{k}: {v}" for k, v in counts.items())] for r, counts in stats["eliminations"].items()]
    return [("h2", "Evolution analysis (the evolve job's output)"),
            ("img", FIGURE_EVOLUTION, "kept length per round, pass rate per operation, eliminations per rule"),
            ("table", ["round", "kept", "mean instruction tokens", "mean response tokens"], lengths),
            ("table", ["operation", "kept", "eliminated", "pass rate"], rates),
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


def files_blocks() -> list[tuple]:
    return [("h2", "Files"),
            ("p", "`items.parquet`: every item with both answers, both verdicts (raw text, first attempt if "
                  "retried) and parsed scores; `summary.json`: every number above; `answers/`, `verdicts/`, "
                  "`ratings/`: what each model wrote, reused by a rerun with the same model, prompt format and "
                  "sampling.")]


def build_blocks(summary: dict) -> list[tuple]:
    agg = summary["aggregates"]
    return (headline_blocks(summary) + difficulty_blocks(agg) + category_blocks(agg)
            + reliability_blocks(agg, summary.get("judge_prefill", False))
            + evolution_blocks(summary.get("evolution")) + setup_blocks(summary) + files_blocks())


def figures(summary: dict) -> dict[str, bytes]:
    """Only the figures whose data exists, by file name."""
    agg = summary["aggregates"]
    out = {}
    if agg["has_difficulty"] and agg["by_band"]:
        groups = {f"difficulty {k}": v for k, v in agg["by_band"].items()} | {"all": agg["overall"]}
        out[FIGURE_BANDS] = plots.outcome_chart(groups, "Win / tie / loss by difficulty")
    if agg["by_category"]:
        out[FIGURE_CATEGORIES] = plots.category_chart(agg["by_category"], agg["threshold"])
    if summary.get("evolution") and summary["evolution"]["lengths"]:
        out[FIGURE_EVOLUTION] = plots.evolution_chart(summary["evolution"])
    return out


def to_markdown(blocks: list[tuple], images: dict[str, bytes]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "note":
            out.append(f"> **Note:** {rest[0]}")
        elif kind == "table":
            header, rows = rest
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out.append("\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]))
        elif kind == "img" and rest[0] in images:
            out.append(f"![{rest[1]}]({rest[0]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then the two bits of markdown the blocks use: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html_block(kind: str, rest: list, images: dict[str, bytes]) -> str:
    if kind in ("h1", "h2", "p"):
        return f"<{kind}>{_inline(rest[0])}</{kind}>"
    if kind == "note":
        return f'<p class="note"><strong>Note:</strong> {_inline(rest[0])}</p>'
    if kind == "table":
        header, rows = rest
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
        body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if kind == "img" and rest[0] in images:
        data = base64.b64encode(images[rest[0]]).decode()
        return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(rest[1])}">' \
               f"<figcaption>{html.escape(rest[1])}</figcaption></figure>"
    return ""


STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{font-size:1.6em}h1+p{font-size:1.15em;background:#e3f2fd;border-left:4px solid #1565c0;padding:.6em 1em}h2{margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
.note{background:#fff8e1;border-left:4px solid #f9a825;padding:.6em 1em}img{max-width:100%}
figcaption{color:#666;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}"""


def to_html(blocks: list[tuple], images: dict[str, bytes]) -> str:
    """One file with the figures embedded (base64), so it can be mailed or opened anywhere."""
    title = next((rest[0] for kind, *rest in blocks if kind == "h1"), "Evaluation")
    body = "\n".join(_html_block(kind, rest, images) for kind, *rest in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def caveats(agg: dict, models: dict) -> list[str]:
    """What limits the result, said plainly next to the headline rather than buried in tables."""
    notes = []
    judge = models["judge"]["model"]
    if judge in (models["candidate"]["model"], models["baseline"]["model"]):
        notes.append(f"The judge ({judge}) is also one of the two models compared; judges tend to prefer "
                     "their own answers.")
    if 0 < agg["judged"] < 30:
        notes.append(f"Only {agg['judged']} items were judged: the interval is wide and per-category ratios "
                     "rest on one or two items each.")
    for role, empty in agg.get("empty_answers", {}).items():
        if empty:
            notes.append(f"The {role}'s answer was empty for {empty} of {agg['items']} items (the model ended its "
                         "reply at once); the judge scored those empty answers as they are.")
    verdicts = agg["verdicts"]
    if verdicts["verdicts"] and verdicts["unreadable"] / verdicts["verdicts"] > 0.2:
        notes.append(f"{verdicts['unreadable']} of {verdicts['verdicts']} verdicts could not be read: the judge "
                     "often does not follow the scoring format.")
    failed_requests = verdicts["failed"] - verdicts["unreadable"]
    if failed_requests:
        notes.append(f"{failed_requests} verdict requests failed (server errors, timeouts): those items are "
                     "not scored; a rerun asks only them again.")
    rate = agg["order"]["disagreement_rate"]
    if rate is not None and rate > 0.3:
        notes.append(f"The judge changed its winner when the answers were swapped for {pct(rate)} of items: "
                     "its verdicts depend strongly on position.")
    return notes


def write_report(summary: dict, out_dir: str) -> dict[str, str]:
    """report.md, report.html (figures embedded) and each figure as PNG beside them; returns the paths."""
    images = figures(summary)
    blocks = build_blocks(summary)
    paths = {"markdown": storage.join(out_dir, "report.md"), "html": storage.join(out_dir, "report.html")}
    storage.write_text(paths["markdown"], to_markdown(blocks, images))
    storage.write_text(paths["html"], to_html(blocks, images))
    for name in (FIGURE_CATEGORIES, FIGURE_BANDS, FIGURE_EVOLUTION):
        path = storage.join(out_dir, name)
        if name in images:
            paths[name] = path
            storage.write_bytes_atomic(path, images[name])
        elif storage.exists(path):  # a figure of an earlier run that this one has no data for
            filesys, inner = storage.filesystem(path)
            filesys.delete_file(inner)
    return paths
