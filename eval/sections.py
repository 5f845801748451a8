"""The report's sections as blocks (headings, paragraphs, notes, tables, figures) from the summary.

Pure: eval.report renders the blocks to report.md and report.html. The headline comes first:
pairwise, the score ratio with its interval in plain words, then the win rate (ties as half) with
its standard error and the length-controlled win rate; single, each role's mean grade.
"""
from __future__ import annotations

from eval.aggregate import BANDS, NO_CATEGORY
from eval.judge import GRADE_PREFILL, VERDICT_PREFILL

FIGURE_CATEGORIES, FIGURE_BANDS, FIGURE_EVOLUTION = "per_category.png", "win_tie_loss_by_difficulty.png", \
    "evolution.png"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _were(count: int) -> str:
    return "was" if count == 1 else "were"


def verdict_words(agg: dict) -> str:
    """The headline in plain words: what the ratio and its interval mean."""
    overall = agg["overall"]
    if overall["ratio"] is None:
        return "No item could be judged, so there is no score ratio (see *Judge reliability*)."
    low, high = overall["ci"]
    level = f"{100 * agg['confidence']:.0f}%"
    orders, both = "each in both orders", agg.get("order", {}).get("both_orders", overall["n"])
    if both < overall["n"]:  # judge.require_both_orders: false counts an item one order could judge
        orders = f"{both} of them in both orders, {overall['n'] - both} in one (judge.require_both_orders: false)"
    text = (f"The candidate scored **{pct(overall['ratio'])}** of the baseline's total score "
            f"({level} interval {pct(low)} to {pct(high)}; {overall['n']} of {agg['items']} items judged, {orders}). ")
    if low > 1:
        text += "The whole interval is above 100%: on this test set the candidate is better than the baseline."
    elif high < 1:
        text += "The whole interval is below 100%: on this test set the candidate is worse than the baseline."
    else:
        text += "The interval includes 100%: on this test set the two models cannot be told apart."
    return text


def win_rate_words(overall: dict) -> str:
    se = f" ± {pct(overall['win_rate_se'])}" if overall["win_rate_se"] is not None else ""
    return (f"Win rate **{pct(overall['win_rate'])}**{se} (ties count half; ± one standard error): wins "
            f"{overall['win']}, ties {overall['tie']}, losses {overall['loss']} (a win: the candidate's mean score "
            f"over both orders is higher). Length-controlled win rate **{pct(overall['lc_win_rate'])}** "
            "(AlpacaEval 2's: the judge's preference regressed on the answers' length difference, read at equal "
            f"length). Mean score {num(overall['candidate_mean'])} vs {num(overall['baseline_mean'])} out of 10.")


def title(summary: dict) -> str:
    models = summary["models"]
    against = f" vs {models['baseline']['name']}" if "baseline" in models and summary["mode"] == "pairwise" else ""
    return f"Evaluation: {models['candidate']['name']}{against}"


def headline_blocks(summary: dict) -> list[tuple]:
    agg = summary["aggregates"]
    if agg["mode"] == "single":
        return [("h1", title(summary)), ("p", grade_words(agg))] + [("note", note) for note in summary["notes"]]
    overall = agg["overall"]
    blocks = [("h1", title(summary)), ("p", verdict_words(agg))]
    if overall["n"]:
        blocks.append(("p", win_rate_words(overall)))
    categories = [name for name in agg["by_category"] if name != NO_CATEGORY]
    if agg["has_categories"] and overall["n"]:
        blocks.append(("p", f"The candidate reached at least {100 * agg['threshold']:.0f}% of the baseline on "
                            f"**{agg['categories_at_or_above']} of {len(categories)}** categories."))
    return blocks + [("note", note) for note in summary["notes"]]


def grade_words(agg: dict) -> str:
    """single: each role's mean grade with its standard error, and the paired ratio with a baseline."""
    parts = []
    for role, g in agg["grades"].items():
        se = f" ± {num(g['se'])}" if g["se"] is not None else ""
        parts.append(f"the {role}'s mean grade is **{num(g['mean'])}/10**{se} ({g['n']} answers graded)")
    text = "Each answer was graded alone from 1 to 10 (single-answer grading; ± one standard error): " + \
        "; ".join(parts) + "."
    paired = agg.get("paired")
    if paired and paired["ratio"] is not None:
        low, high = paired["ci"]
        text += (f" Over the {paired['n']} items graded for both, the candidate's total is **{pct(paired['ratio'])}** "
                 f"of the baseline's ({100 * agg['confidence']:.0f}% interval {pct(low)} to {pct(high)}).")
    return text


def _outcome_rows(groups: dict[str, dict]) -> list[list]:
    return [[name, g["n"], g["win"], g["tie"], g["loss"], pct(g["win_rate"]), pct(g["ratio"])]
            for name, g in groups.items()]


def difficulty_blocks(agg: dict) -> list[tuple]:
    blocks = [("h2", "Win / tie / loss by difficulty" if agg["mode"] == "pairwise" else "Grades by difficulty")]
    if not agg["has_difficulty"]:
        return blocks + [("p", "The test set has no difficulty field, so the difficulty views are left out.")]
    if agg["mode"] == "single":
        return blocks + [_grade_table("band", agg["by_band"], [name for name, _, _ in BANDS])]
    if not agg["overall"]["n"]:
        return blocks + [("p", "No item was judged.")]
    groups = agg["by_band"] | {"all": agg["overall"]}
    return blocks + [("table", ["band", "n", "win", "tie", "loss", "win rate", "score ratio"], _outcome_rows(groups)),
                     ("img", FIGURE_BANDS, "win, tie and loss shares per difficulty band")]


def _grade_table(first: str, by_role: dict[str, dict], names: list[str]) -> tuple:
    """single: one row per group, the number graded and the mean grade of each role."""
    roles = list(by_role)
    rows = [[name] + [cell for role in roles for cell in (by_role[role].get(name, {}).get("n", 0),
                                                         num(by_role[role].get(name, {}).get("mean")))]
            for name in names if any(name in by_role[role] for role in roles)]
    return ("table", [first] + [h for role in roles for h in (f"{role} n", f"{role} mean grade")], rows)


def category_blocks(agg: dict) -> list[tuple]:
    blocks = [("h2", "Per category")]
    if not agg["has_categories"]:
        return blocks + [("p", "The test set has no category field, so there is no per-category view.")]
    if agg["mode"] == "single":
        names = sorted({name for groups in agg["by_category"].values() for name in groups})
        return blocks + [_grade_table("category", agg["by_category"], names)]
    if not agg["by_category"]:
        return blocks + [("p", "No item was judged.")]
    order = sorted(agg["by_category"].items(), key=lambda kv: (kv[1]["ratio"] is None, -(kv[1]["ratio"] or 0)))
    rows = [[name, g["n"], pct(g["ratio"]), pct(g["win_rate"]), num(g["candidate_mean"]), num(g["baseline_mean"]),
             f"{g['win']}/{g['tie']}/{g['loss']}"] for name, g in order]
    note = [("p", f"`{NO_CATEGORY}`: items whose category field is empty.")] if NO_CATEGORY in agg["by_category"] \
        else []
    return blocks + [("img", FIGURE_CATEGORIES, "score ratio per category"),
                     ("table", ["category", "n", "score ratio", "win rate", "candidate", "baseline", "win/tie/loss"],
                      rows)] + note


def answers_blocks(summary: dict) -> list[tuple]:
    """Per role: answers written, cut by their token limit, empty, and their mean length."""
    agg, limit = summary["aggregates"], summary["sampling"]["answers"]["max_tokens"]
    rows = [[role, s["answers"], s["cut"], s["empty"], num(s["mean_chars"]), num(s["mean_tokens"])]
            for role, s in agg["answers"].items()]
    return [("h2", "Answers"),
            ("table", ["role", "answers", f"cut at {limit} tokens", "empty", "mean characters", "mean tokens"], rows),
            ("p", "Cut: the answer ended at `answer_sampling.max_tokens`, not where the model ended it; the judge "
                  f"scored it as it is. Items without an answer of every model: {agg['answer_failures']}.")]


def fit_words(fit: dict, limit: int, mode: str = "pairwise") -> str:
    """What the judge's prompt budget did (eval.budget), or '' when it did nothing."""
    text = ""
    how, column = ("their answers were cut to one common length", "answers_cut_to") if mode == "pairwise" else \
        ("the answer was cut", "<role>_cut_to")
    if fit["cut"]:
        text += (f"{fit['cut']} judge prompts would not fit in `judge.max_prompt_tokens` ({limit}): {how} (the "
                 f"shortest cut: {fit['shortest_cut']} tokens; `{column}` in items.parquet), never the judge's "
                 "instructions or the question. ")
    if fit["too_long"]:
        text += (f"{fit['too_long']} were not judged: the question alone does not fit in `judge.max_prompt_tokens` "
                 f"({limit}). ")
    return text


def reliability_blocks(summary: dict) -> list[tuple]:
    agg, prefill = summary["aggregates"], summary.get("judge_prefill", False)
    verdicts = agg["verdicts"]
    failures = ", ".join(f"{k}: {v}" for k, v in verdicts["failures"].items()) or "none"
    asked = "every item twice, answers swapped" if agg["mode"] == "pairwise" else "each answer once"
    blocks = [("h2", "Judge reliability"),
              ("p", f"{verdicts['verdicts']} verdicts asked ({asked}); {verdicts['retried']} "
                    f"{_were(verdicts['retried'])} unreadable and asked again with a format reminder; "
                    + (f"{verdicts['failed']} gave no usable scores ({failures}) and {_were(verdicts['failed'])} "
                       "counted as failures, never guessed. " if verdicts["failed"] else "all gave usable scores. ")
                    + fit_words(agg["judge_fit"], summary.get("judge_max_prompt_tokens", 0), agg["mode"]))]
    if agg["mode"] == "pairwise":
        blocks += order_blocks(agg)
    if prefill:
        start = VERDICT_PREFILL if agg["mode"] == "pairwise" else GRADE_PREFILL
        blocks.append(("p", f"Every verdict was started with `{start}` for the judge (`judge_prefill`), so a small "
                            "judge that ignores the scoring format still writes its numbers; the numbers are its own, "
                            "never filled in, but may mean little."))
    return blocks


def order_blocks(agg: dict) -> list[tuple]:
    order, by_order = agg["order"], agg["order"]["mean_difference_by_order"]
    dropped = (f"Items with one readable order only: {agg['one_order_only']}, not counted (both orders are "
               "required, `judge.require_both_orders`, so the position bias cancels for every item counted); "
               if agg["require_both_orders"] else "Items with one readable order are scored on that order alone "
               "(`judge.require_both_orders: false`): their position bias is not cancelled; ")
    ties = " Each of those items counts as a tie (`judge.disagreement_as_tie`, FastChat's rule)." \
        if order["counted_as_ties"] else ""
    none = agg["unjudged"] - agg["one_order_only"] - agg["judge_fit"]["too_long"]
    return [("p", dropped + f"items without any readable verdict: {none}."),
            ("p", f"The two orders disagreed on the winner for {order['disagree']} of {order['both_orders']} items "
                  f"({pct(order['disagreement_rate'])}).{ties} Mean candidate minus baseline score with the candidate "
                  f"shown first: {num(by_order['cb'])}; shown second: {num(by_order['bc'])} "
                  "(a gap between the two is the judge's position bias, which judging both orders cancels).")]


def reuse_counts(summary: dict) -> list[tuple[str, dict]]:
    """(what, reused/generated/failed) of every cached stage that ran."""
    out = [(f"{role} answers", counts) for role, counts in summary["answers"].items()]
    if summary.get("verdicts"):
        out.append(("verdicts" if summary["mode"] == "pairwise" else "grades", summary["verdicts"]))
    if (summary.get("evolution") or {}).get("ratings"):
        out.append(("difficulty ratings", summary["evolution"]["ratings"]))
    return out


def setup_blocks(summary: dict) -> list[tuple]:
    models, sampling, testset = summary["models"], summary["sampling"], summary["testset"]
    rows = [[role, m["model"], m["backend"], m["prompt_format"], m.get("device", "-"), m.get("dtype", "-"),
             ", ".join(f"{k}={v}" for k, v in sampling["judge" if role == "judge" else "answers"].items())]
            for role, m in models.items()]
    return [("h2", "Setup"),
            ("table", ["role", "model", "backend", "prompt format", "device", "dtype", "sampling"], rows),
            ("p", "Requests: " + "; ".join(f"{name} {c['reused']} reused, {c['generated']} generated, "
                                           f"{c['failed']} failed" for name, c in reuse_counts(summary)) +
                  " (reused: cached by an earlier run with the same settings).")] + testset_blocks(testset) + \
        ([("p", "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()) + ".")]
         if summary.get("seconds") else [])


def testset_blocks(testset: dict) -> list[tuple]:
    """The test set's counts, and its quarantined rows and dropped fields with their reasons."""
    quarantined = ", ".join(f"{k}: {v}" for k, v in testset["quarantined"].items()) or "none"
    dropped = ", ".join(f"{k}: {v}" for k, v in testset.get("dropped_fields", {}).items()) or "none"
    blocks = [("p", f"Test set `{testset['path']}`: {testset['rows']} rows read, {testset['used']} items "
                    f"evaluated, quarantined: {quarantined}; fields dropped (the row kept): {dropped}.")]
    listed = testset.get("listed") or []
    if listed:
        blocks += [("table", ["id", "where", "problem", "detail"],
                    [[r["id"], r["where"], r["problem"], r["detail"]] for r in listed]),
                   ("p", "Every quarantined row, with its reason and raw text, is in `quarantine.parquet`.")]
    return blocks


def files_blocks(mode: str) -> list[tuple]:
    judged = "both verdicts (raw text, first attempt if retried) and parsed scores" if mode == "pairwise" else \
        "each grade (raw text, first attempt if retried) and its score"
    return [("h2", "Files"),
            ("p", f"`items.parquet`: every item with its answers (token counts, `finished`: not cut by the token "
                  f"limit), {judged}; `quarantine.parquet`: the test set's rows left out, with reasons; "
                  "`summary.json`: every number above; `answers/`, `verdicts/`, `grades/`, `ratings/`: what each "
                  "model wrote, reused by a rerun with the same model files, engine, prompt format and sampling.")]
