"""The report's figures as PNG bytes: per-category ratios, win/tie/loss by difficulty band, evolution.

Matplotlib's object API with the Agg canvas: no pyplot state, no display, safe in any process.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WIN_COLOR, TIE_COLOR, LOSS_COLOR = "#2e7d32", "#9e9e9e", "#c62828"
GOOD, WEAK = "#1565c0", "#90a4ae"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def category_chart(by_category: dict[str, dict], threshold: float) -> bytes:
    """One bar per category, its score ratio in %, sorted; the threshold and 100% marked."""
    names = sorted(by_category, key=lambda n: by_category[n]["ratio"])
    ratios = [100 * by_category[n]["ratio"] for n in names]
    fig = Figure(figsize=(7, 1.2 + 0.28 * len(names)))
    ax = fig.add_subplot()
    ax.barh(names, ratios, color=[GOOD if r >= 100 * threshold else WEAK for r in ratios])
    ax.axvline(100, color="black", linewidth=1)
    ax.axvline(100 * threshold, color="black", linewidth=1, linestyle="--")
    for y, value in enumerate(ratios):
        ax.text(value, y, f" {value:.0f}%", va="center", fontsize=8)
    ax.set_xlabel(f"candidate score as % of baseline (dashed: {100 * threshold:.0f}%)")
    ax.set_xlim(0, max(ratios + [100]) * 1.15)
    ax.set_title("Score ratio per category")
    return _png(fig)


def outcome_chart(groups: dict[str, dict], title: str) -> bytes:
    """Stacked win/tie/loss shares (with counts) for each group, e.g. difficulty bands and overall."""
    names = list(groups)
    fig = Figure(figsize=(7, 1.2 + 0.5 * len(names)))
    ax = fig.add_subplot()
    left = [0.0] * len(names)
    for key, color in (("win", WIN_COLOR), ("tie", TIE_COLOR), ("loss", LOSS_COLOR)):
        shares = [100 * groups[n][key] / groups[n]["n"] if groups[n]["n"] else 0 for n in names]
        ax.barh(names, shares, left=left, color=color, label=key)
        for y, (start, share, name) in enumerate(zip(left, shares, names)):
            if share >= 8:
                ax.text(start + share / 2, y, str(groups[name][key]), ha="center", va="center", color="white")
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of judged items (numbers: item counts)")
    ax.invert_yaxis()
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, fontsize=8, frameon=False)
    ax.set_title(title, loc="left")
    return _png(fig)


def _round_lines(ax, rows: list[dict], series: dict[str, str], title: str, ylabel: str) -> None:
    rounds = [r["round"] for r in rows]
    for key, label in series.items():
        ax.plot(rounds, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label=label)
    ax.set(title=title, xlabel="round", ylabel=ylabel)
    ax.set_xticks(rounds)
    ax.legend(fontsize=8)


def evolution_chart(stats: dict) -> bytes:
    """A 2x2 grid, legible at the report's width: kept lengths per round, pass rate per operation,
    eliminations per rule and errors per round (every round, those with none too), and the judged
    difficulty per round when it was asked for (else the pass rate per round)."""
    fig = Figure(figsize=(10, 7.5))
    lengths, rates, eliminations, last = (fig.add_subplot(2, 2, i) for i in (1, 2, 3, 4))
    _round_lines(lengths, stats["lengths"], {"instruction_tokens": "instruction", "response_tokens": "response"},
                 "Mean kept length per round", "tokens")
    ops = list(stats["pass_rate"])
    rates.barh(ops, [100 * stats["pass_rate"][o]["pass_rate"] for o in ops], color=GOOD)
    rates.set(title="Pass rate per operation (errors count as fails)", xlabel="% kept", xlim=(0, 100))
    _eliminations(eliminations, stats["eliminations"], stats.get("rounds", {}))
    if stats.get("difficulty"):
        _round_lines(last, stats["difficulty"], {"mean": "judged difficulty"}, "Judged difficulty per round", "1-10")
    else:
        rounds = [{"round": r, "pass_rate": 100 * v["pass_rate"]} for r, v in stats.get("rounds", {}).items()]
        _round_lines(last, rounds, {"pass_rate": "kept / candidates"}, "Pass rate per round", "%")
        last.set_ylim(0, 100)
    return _png(fig)


def _eliminations(ax, by_round: dict, rounds: dict) -> None:
    """Stacked bars per round: eliminations per rule, then errors; a round with none shows as 0."""
    names = sorted(set(by_round) | set(rounds))
    series = {reason: [by_round.get(r, {}).get(reason, 0) for r in names]
              for reason in sorted({reason for counts in by_round.values() for reason in counts})}
    if any(rounds.get(r, {}).get("errors") for r in names):
        series["errors"] = [rounds.get(r, {}).get("errors", 0) for r in names]
    bottom = [0] * len(names)
    for label, values in series.items():
        ax.bar([str(r) for r in names], values, bottom=bottom, label=label,
               color=LOSS_COLOR if label == "errors" else None)
        bottom = [a + b for a, b in zip(bottom, values)]
    if not series:
        ax.bar([str(r) for r in names], [0] * len(names))
    ax.set_ylim(0, max(bottom + [1]) * 1.15)  # rounds with none stand at 0, not in the middle of the axis
    ax.set(title="Eliminations per rule and errors per round", xlabel="round", ylabel="candidates")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if series:
        ax.legend(fontsize=7)
