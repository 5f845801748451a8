"""The finish stage (issue 23): near-duplicates by MinHash-LSH and benchmark contamination by n-gram
overlap, as pure functions, then through the evolve job on Ray (echo backend, planted rows)."""
from __future__ import annotations

import hashlib
import json
import random
import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.config import load_config
from evol.config import EvolveConfig
from evol.contamination import EvalSet, build_index, contaminated_by
from evol.curation import (
    READ_COLUMNS,
    clusters,
    curate,
    evaluation_sets,
    part_pairs,
    prepare,
)
from evol.dedupe import components, lsh_params, signatures, similarity, sketches
from evol.elimination import words
from evol.ngrams import text_words
from evol.operations import choose_operation
from evol.output import read_records
from evol.records import CONTAMINATED, DUPLICATE, ELIMINATED, KEPT, in_training_set
from evol.run import run_evolve
from evol.templates import evolve_prompt
from tests.evolve_checks import assert_counts_and_lineage

RIVERS = "Name three rivers of Europe and give the length of each one in kilometres"
RAIN_8 = "请写一首关于雨的诗，要求押韵并且不少于八行。"
RAIN_10 = "请写一首关于雨的诗，要求押韵并且不少于十行。"
CAR = "If a car travels 120 miles in 2 hours, what is its average speed in miles per hour?"  # WizardLM item 1
GOLDBACH = ("What is the solution to the Goldbach Conjecture, which states that every even integer greater than 2 "
            "can be expressed as the sum of two prime numbers?")  # item 17
GOLDBACH_REWORDED = ("what's the solution of the GOLDBACH conjecture - which states that every even integer greater "
                     "than 2 can be expressed as the sum of two primes")
STORY = ("Write a short story about a character who discovers a mysterious object in their backyard. What is the "
         "object, and what does it do? How does the character react to it? What happens next?")  # item 46


def _similarity(a: str, b: str) -> float:
    sketch_a, sketch_b = sketches(signatures([a, b], shingle_words=3, num_perm=128))
    return similarity(sketch_a, sketch_b)


def test_minhash_sees_through_case_spacing_and_punctuation_in_any_script():
    assert _similarity(RIVERS, "  name THREE rivers of europe, and give the length of each one in kilometres!") == 1.0
    assert _similarity(RAIN_8, RAIN_10) >= 0.7  # one character of twenty changed
    assert _similarity(RIVERS, "Write a sonnet about the sea at night, in the voice of a lighthouse keeper") < 0.1
    assert _similarity(RAIN_8, "Напишите стихотворение о дожде в форме сонета") < 0.1


def test_lsh_bands_find_pairs_above_the_threshold_and_rarely_below():
    bands, rows = lsh_params(0.7, 128)
    assert bands * rows <= 128

    def proposed(s):
        return 1 - (1 - s ** rows) ** bands

    assert proposed(0.9) > 0.99 and 0.3 < proposed(0.7) < 0.7 and proposed(0.4) < 0.01


def test_clusters_are_transitive_and_labelled_by_their_earliest_node():
    labels = components(6, np.array([[1, 0], [4, 3], [3, 2]]))
    assert labels.tolist() == [0, 0, 2, 2, 2, 5]


def test_ascii_words_by_the_fast_path_are_the_unicode_words():
    rng = random.Random(0)
    alphabet = string.printable + "'''__\x00\x1c\x7f"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(20_000)]
    texts += ["Don't stop: it's 'quoted' and o'clock''s", "snake_case_words", "  ", "?!", "x'", "'y"]
    assert [text_words(t) for t in texts] == [words(t) or [t.strip()] for t in texts]


def _block(rows: list[dict]) -> pa.Table:
    """Record rows as the finish stage reads them from one bucket file."""
    full = [{"input": None, "response": "An answer.", "status": KEPT, "response_reason": None,
             "response_truncated": False} | row for row in rows]
    return pa.Table.from_pylist(full).select(READ_COLUMNS)


def _duplicates(tables: list[pa.Table], parts: int) -> list[tuple[str, str]]:
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", [])
    blocks = [prepare(table, bucket, None, cfg) for bucket, table in enumerate(tables)]
    pairs = [part_pairs(part, parts, cfg.dedupe.threshold, *blocks) for part in range(parts)]
    decisions, stats = clusters(len(blocks), *blocks, *pairs)
    assert stats["removed"] == decisions.num_rows
    return sorted(zip(decisions["id"].to_pylist(), decisions["duplicate_of"].to_pylist()))


def test_near_duplicates_are_the_same_however_the_rows_are_split_into_blocks_and_parts():
    rng = random.Random(3)
    vocab = [f"{rng.choice(string.ascii_lowercase)}{rng.randrange(10**6)}" for _ in range(2000)]
    texts = [" ".join(rng.choice(vocab) for _ in range(20)) for _ in range(60)]
    rows = [{"id": f"o{i:02d}", "round": i % 3, "instruction": text} for i, text in enumerate(texts)]
    rows += [{"id": "c1", "round": 0, "instruction": texts[5].upper() + " one"},  # o05 is round 2: c1 stays
             {"id": "c2", "round": 2, "instruction": texts[5] + " two"},  # a third member of that cluster
             {"id": "c3", "round": 1, "instruction": texts[7] + " three"},  # o07 has round 1 too: "c3" < "o07"
             {"id": "c4", "round": 0, "instruction": texts[9] + " four", "status": ELIMINATED},  # not training
             {"id": "c5", "round": 0, "instruction": texts[11], "response_reason": "could_not_answer"}]  # rows
    expected = [("c2", "c1"), ("o05", "c1"), ("o07", "c3")]
    assert _duplicates([_block(rows)], parts=1) == expected
    shuffled = rng.sample(rows, len(rows))
    assert _duplicates([_block(shuffled[i:i + 7]) for i in range(0, len(rows), 7)], parts=3) == expected


def _index(n: int = 13):
    sets = [EvalSet("wizardlm_testset", "bundled:wizardlm_testset.jsonl", "-",
                    [("1", CAR), ("17", GOLDBACH), ("46", STORY), ("90", "Tell me a joke about cats")]),
            EvalSet("other", "/x.jsonl", "-", [("a", CAR)])]
    return build_index(sets, n)


def test_contamination_finds_exact_reworded_short_and_response_copies_and_names_the_earliest_item():
    rows = [[CAR, "60 mph"],                                              # exact (also in the 2nd set: the first wins)
            [GOLDBACH_REWORDED, "Nobody knows."],                         # case, punctuation, three words changed
            ["Write something.", f"Sure. {STORY} I would start there."],  # the response holds an item
            ["Please tell me a joke about cats, a short one.", "Meow."],  # a short item (< 13 words), whole and in order
            ["Tell me a joke about dogs.", "Woof."],                      # the short item's words, not all of them
            [RIVERS, "The Danube, the Rhine and the Volga."]]
    assert contaminated_by(rows, _index()) == ["wizardlm_testset:1", "wizardlm_testset:17", "wizardlm_testset:46",
                                               "wizardlm_testset:90", None, None]
    assert contaminated_by(rows[:2], _index(n=21))[1] is None  # the copy shares 20 words in a row, not 21


# --- through the evolve job ---------------------------------------------------------------------

def _seeds(tmp_path, cfg_overrides: list[str]) -> tuple[str, str]:
    """Seed rows with planted near-copies and test items; returns the file and the echo rewrite of
    seed `x` in round 1, which seed `y` copies (a duplicate across seeds and rounds)."""
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", cfg_overrides)
    x = "Describe the water cycle for a class of ten-year-olds"
    op = choose_operation(cfg.evolve.seed, "x", 1, cfg.evolve.operations)
    tag = hashlib.blake2b(evolve_prompt(op, x).encode(), digest_size=4).hexdigest()
    rewrite = f"Canned answer {tag} with some detail about the topic at hand"  # what echo answers
    rows = [{"id": "x", "instruction": x, "output": "Evaporation, condensation, rain."},
            {"id": "y", "instruction": rewrite.upper() + "!", "output": "Some answer."},
            {"id": "rivers-b", "instruction": RIVERS.lower() + "!", "output": "The Danube."},
            {"id": "rivers-a", "instruction": RIVERS, "output": "The Rhine."},
            {"id": "rain-a", "instruction": RAIN_8, "output": "雨落在屋顶上。"},
            {"id": "rain-b", "instruction": RAIN_10, "output": "雨落在窗台上。"},
            {"id": "car", "instruction": CAR, "output": "60 miles per hour."},
            {"id": "goldbach", "instruction": GOLDBACH_REWORDED, "output": "It is open."},
            {"id": "story", "instruction": "Give me a writing prompt.", "output": STORY},
            *({"id": f"clean-{i}", "instruction": f"List {i} uses of a paperclip in an office", "output": "Clips."}
              for i in range(3, 9))]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return str(path), rewrite


def _records(out):
    return read_records(str(out / "records")).to_pandas().set_index("id").sort_index()


def _training_ids(out) -> tuple[list[str], list[str]]:
    parquet = pq.read_table(out / "training" / "parquet").column("id").to_pylist()
    lines = [json.loads(line)["id"] for f in sorted((out / "training" / "jsonl").iterdir())
             for line in f.read_text().splitlines()]
    return sorted(parquet), sorted(lines)


def test_the_finish_stage_marks_planted_rows_and_the_training_files_agree(tmp_path, local_ray):
    out = tmp_path / "out"
    overrides = [f"output.path={out}", "generation.backend=echo", "generation.num_cpus=0.5", "output.buckets=4",
                 "seeds.limit=null", "dedupe.in_process_records=0"]  # the Ray tasks, as on a big output
    seeds, rewrite = _seeds(tmp_path, overrides)
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", [*overrides, f"seeds.path={seeds}"])
    summary = run_evolve(cfg)
    records = _records(out)
    assert_counts_and_lineage(records.reset_index(), summary, seeds=15, rounds=2)
    rows = {row["id"]: row for row in pq.read_table(out / "records").to_pylist()}
    [x1] = [row for row in rows.values() if row["root_id"] == "x" and row["round"] == 1]
    assert x1["instruction"] == rewrite
    marks = {i: (row["status"], row["duplicate_of"] or row["contaminated_by"])
             for i, row in rows.items() if row["status"] != KEPT}
    assert marks == {
        x1["id"]: (DUPLICATE, "y"),              # round 1 of one seed copies round 0 of another: the seed stays
        "rivers-b": (DUPLICATE, "rivers-a"),   # same round: the lowest id stays
        "rain-b": (DUPLICATE, "rain-a"),       # a non-Latin pair
        "car": (CONTAMINATED, "wizardlm_testset:1"), "goldbach": (CONTAMINATED, "wizardlm_testset:17"),
        "story": (CONTAMINATED, "wizardlm_testset:46")}
    expected = sorted(i for i, row in rows.items() if in_training_set(row, False))
    assert _training_ids(out) == (expected, expected) and len(expected) == summary["training_rows"] == 45 - 6
    assert summary["removed_from_training"]["duplicate"] == 3 and summary["removed_from_training"]["contaminated"] == 3
    assert [r["duplicate"] for r in summary["removed_from_training"]["by_round"]] == [2, 1, 0]
    assert summary["dedupe"]["clusters"] == 3 and {c["kept"] for c in summary["dedupe"]["largest"]} == {
        "y", "rivers-a", "rain-a"}
    assert summary["decontamination"]["contaminated_by_set"] == {"wizardlm_testset": 3}
    card = (out / "README.md").read_text()
    assert "Near-duplicates removed: **3** in 3 clusters" in card and "| wizardlm_testset | 218 | 3 | 3 |" in card

    # the stage run again (on Ray) finishes a bucket left half rewritten (training files new, records old)
    # and no other
    bucket = next(f for f in (out / "records").iterdir() if "rivers-b" in pq.read_table(f).column("id").to_pylist())
    table = pq.read_table(bucket)
    undone = pa.array([KEPT if status == DUPLICATE else status for status in table.column("status").to_pylist()])
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", undone), bucket)
    again = curate(local_ray, cfg, str(out / "records"), evaluation_sets(cfg))
    assert not again["in_process"] and again["rewritten_buckets"] == 1 and _records(out).equals(records)
    assert _training_ids(out) == (expected, expected)
    # a small output is checked in the driver with the same functions: the same decisions, nothing to rewrite
    small = curate(local_ray, cfg.model_copy(update={"dedupe": cfg.dedupe.model_copy(
        update={"in_process_records": 20_000})}), str(out / "records"), evaluation_sets(cfg))
    assert small["in_process"] and small["rewritten_buckets"] == 0
    assert (small["dedupe"], small["decontamination"]) == (summary["dedupe"], summary["decontamination"])


def test_the_evaluate_job_warns_when_its_test_set_was_not_checked(tmp_path):
    from eval.evolution import decontamination_warning
    from eval.testset import resolve_testset_path

    bundled = resolve_testset_path("bundled:wizardlm_testset.jsonl")
    with open(bundled, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    out = tmp_path / "evolve"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"decontamination": {"enabled": True, "sets": [{"sha256": digest}]}}))
    assert decontamination_warning(str(out), [bundled]) is None
    other = tmp_path / "mine.jsonl"
    other.write_text('{"Instruction": "What is 2+2?"}\n')
    assert "not checked for contamination against this test set" in decontamination_warning(str(out), [str(other)])
    (out / "summary.json").write_text(json.dumps({"kept": 3}))  # an evolve run that checked nothing
    assert decontamination_warning(str(out), [bundled]) is not None
    assert decontamination_warning(None, [bundled]) is None  # no training data named: nothing to say
