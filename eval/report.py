"""report.md and a self-contained report.html from one list of blocks, so both say the same thing.

The summary (see eval.pipeline) is turned into blocks (eval.sections, eval.evolution_report):
headings, paragraphs, notes, tables and figures. The headline with its interval and a plain-words
reading come first, then the caveats, so a reader knows the result and how far to trust it within
a minute.
"""
from __future__ import annotations

import base64
import html
import re

from common import storage
from eval import plots
from eval.evolution_report import evolution_blocks
from eval.sections import (FIGURE_BANDS, FIGURE_CATEGORIES, FIGURE_EVOLUTION, answers_blocks, category_blocks,
                           difficulty_blocks, files_blocks, headline_blocks, pct, reliability_blocks, setup_blocks)

LENGTH_GAP = 0.1  # win rate minus length-controlled win rate above which the report names the length effect


def build_blocks(summary: dict) -> list[tuple]:
    agg = summary["aggregates"]
    return (headline_blocks(summary) + difficulty_blocks(agg) + category_blocks(agg) + answers_blocks(summary)
            + reliability_blocks(summary) + evolution_blocks(summary.get("evolution")) + setup_blocks(summary)
            + files_blocks(agg["mode"]))


def figures(summary: dict) -> dict[str, bytes]:
    """Only the figures whose data exists, by file name."""
    agg = summary["aggregates"]
    out = {}
    if agg["mode"] == "pairwise" and agg["has_difficulty"] and agg["by_band"]:
        out[FIGURE_BANDS] = plots.outcome_chart(agg["by_band"] | {"all": agg["overall"]},
                                                "Win / tie / loss by difficulty")
    if agg["mode"] == "pairwise" and agg["by_category"]:
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


def caveats(agg: dict, models: dict, answer_max_tokens: int | None = None) -> list[str]:
    """What limits the result, said plainly next to the headline rather than buried in tables."""
    notes = []
    judge = models["judge"]["model"]
    if judge in (models[role]["model"] for role in models if role != "judge"):
        notes.append(f"The judge ({judge}) is also one of the models evaluated; judges tend to prefer "
                     "their own answers.")
    judged = agg["judged"] if agg["mode"] == "pairwise" else min(g["n"] for g in agg["grades"].values())
    if 0 < judged < 30:
        notes.append(f"Only {judged} items were judged: the interval is wide and per-category numbers "
                     "rest on one or two items each.")
    notes += answer_caveats(agg, answer_max_tokens)
    verdicts = agg["verdicts"]
    if verdicts["verdicts"] and verdicts["unreadable"] / verdicts["verdicts"] > 0.2:
        notes.append(f"{verdicts['unreadable']} of {verdicts['verdicts']} verdicts could not be read: the judge "
                     "often does not follow the scoring format.")
    failed_requests = verdicts["failed"] - verdicts["unreadable"]
    if failed_requests:
        notes.append(f"{failed_requests} verdict requests failed (server errors, timeouts): those items are "
                     "not scored; a rerun asks only them again.")
    return notes + (pairwise_caveats(agg) if agg["mode"] == "pairwise" else [])


def answer_caveats(agg: dict, max_tokens: int | None = None) -> list[str]:
    notes = []
    for role, stats in agg["answers"].items():
        if stats["empty"]:
            notes.append(f"The {role}'s answer was empty for {stats['empty']} of {agg['items']} items (the model "
                         "ended its reply at once); the judge scored those empty answers as they are.")
        if stats["cut"]:
            limit = f" ({max_tokens} tokens)" if max_tokens is not None else ""
            notes.append(f"{stats['cut']} of the {role}'s {stats['answers']} answers were cut by "
                         f"answer_sampling.max_tokens{limit}: the judge saw them unfinished.")
    fit = agg["judge_fit"]
    if fit["cut"] or fit["too_long"]:
        notes.append(f"{fit['cut']} judge prompts had their answers shortened to fit the judge's prompt limit "
                     f"and {fit['too_long']} could not be judged at all (see *Judge reliability*).")
    return notes


def pairwise_caveats(agg: dict) -> list[str]:
    notes = []
    if agg["one_order_only"]:
        notes.append(f"{agg['one_order_only']} items had a readable verdict in one order only and are not "
                     "counted (`judge.require_both_orders`).")
    rate = agg["order"]["disagreement_rate"]
    if rate is not None and rate > 0.3:
        notes.append(f"The judge changed its winner when the answers were swapped for {pct(rate)} of items: "
                     "its verdicts depend strongly on position.")
    overall, lengths = agg["overall"], agg["answers"]
    if overall["win_rate"] is not None and overall["lc_win_rate"] is not None \
            and abs(overall["win_rate"] - overall["lc_win_rate"]) > LENGTH_GAP:
        notes.append(f"Answer length moves the verdicts: the candidate's answers average "
                     f"{lengths['candidate']['mean_chars']:.0f} characters against the baseline's "
                     f"{lengths['baseline']['mean_chars']:.0f}, and its win rate of {pct(overall['win_rate'])} is "
                     f"{pct(overall['lc_win_rate'])} at equal length.")
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
