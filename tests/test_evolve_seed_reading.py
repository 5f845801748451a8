"""How the evolve job reads seed files (ids, pieces, limit, prompt budget), without Ray."""
import json

import pyarrow as pa
import pytest

from common.config import UserError, load_config
from evol.config import EvolveConfig
from evol.preflight import check_prompt_budget, preflight
from evol.reading import read_seed_files, seed_files
from evol.seeds import DUPLICATE_ID, SeedFields, parse_jsonl
from tests.s3_fixtures import moto_s3  # noqa: F401

FIELDS = SeedFields("instruction", "input", "output", "id")


def _read(root, piece_bytes=1 << 20, limit=None, files=None) -> list[list[dict]]:
    """The UDF's tables, as row lists, for the files of `root` in order."""
    batch = pa.table({"path": files or seed_files(str(root))})
    return [t.to_pylist() for t in read_seed_files(batch, FIELDS, str(root), piece_bytes, limit)]


def _jsonl(path, *objs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))


def test_default_ids_are_relative_to_seeds_path_and_survive_a_move(tmp_path):
    for where in ("first", "moved/elsewhere"):
        _jsonl(tmp_path / where / "sub" / "a.jsonl", {"instruction": "Name rivers."}, {"instruction": "Add."})
    first, moved = (_read(tmp_path / where) for where in ("first", "moved/elsewhere"))
    assert [(r["seed_id"], r["source"], r["line"]) for r in first[0]] == [
        ("sub/a.jsonl:1", "sub/a.jsonl", 1), ("sub/a.jsonl:2", "sub/a.jsonl", 2)]
    assert moved == first
    single = _read(tmp_path / "first" / "sub" / "a.jsonl")
    assert [r["seed_id"] for r in single[0]] == ["a.jsonl:1", "a.jsonl:2"]


def test_a_large_jsonl_file_is_read_in_pieces_with_exact_line_numbers(tmp_path):
    objs = [{"instruction": f"Task {i} \u2028 with a line separator inside"} for i in range(40)]
    data = "".join(json.dumps(o, ensure_ascii=False) + "\n" + ("\n" if i % 7 == 0 else "")
                   for i, o in enumerate(objs)).encode()
    (tmp_path / "big.jsonl").write_bytes(data)
    tables = _read(tmp_path / "big.jsonl", piece_bytes=200)
    assert len(tables) >= len(data) // 200 - 1 and max(len(t) for t in tables) <= 4
    rows = [r for t in tables for r in t]
    assert rows == parse_jsonl(data, "big.jsonl", FIELDS)
    assert len(rows) == 40 and rows[-1]["line"] == 40 + 6 and rows[-1]["error"] is None


def test_the_limit_takes_the_first_rows_in_file_and_line_order_and_stops_reading(tmp_path):
    _jsonl(tmp_path / "b.jsonl", *({"id": f"b{i}", "instruction": "x"} for i in range(3)))
    _jsonl(tmp_path / "a.jsonl", {"id": "a0", "instruction": "x"}, {"id": "a1", "instruction": "x"})
    _jsonl(tmp_path / "c" / "c.jsonl", {"id": "c0", "instruction": "x"})
    assert seed_files(str(tmp_path))[:2] == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    tables = _read(tmp_path, limit=3)
    assert [[r["seed_id"] for r in t] for t in tables] == [["a0", "a1"], ["b0"]]
    assert _read(tmp_path, limit=3) == tables
    assert [r["seed_id"] for t in _read(tmp_path, limit=4, piece_bytes=30) for r in t] == ["a0", "a1", "b0", "b1"]


def test_duplicates_inside_a_piece_are_marked_where_they_are_read(tmp_path):
    _jsonl(tmp_path / "d.jsonl", {"id": "x", "instruction": "one"}, {"id": "x", "instruction": "two"})
    rows = _read(tmp_path / "d.jsonl")[0]
    assert [r["error"] for r in rows] == [None, DUPLICATE_ID]


def test_the_driver_checks_the_prompt_budget_with_the_models_tokenizer(tmp_path):
    overrides = ["seeds.max_instruction_tokens=100", "generation.max_prompt_tokens=250",
                 f"output.path={tmp_path / 'out'}"]
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", overrides)  # 116 words + 100 + 8 fit in 250
    expected = ("config error: generation.max_prompt_tokens: 250 cannot hold an evolve prompt: 200 tokens of "
                "template + 100 tokens of instructions (seeds.max_instruction_tokens, "
                "evolve.evolve_sampling.max_tokens) + 8 = 308")
    with pytest.raises(UserError) as info:
        preflight(cfg)
    assert str(info.value) == expected
    assert not (tmp_path / "out").exists()
    check_prompt_budget(load_config(EvolveConfig, "configs/tiny.yaml", ["seeds.max_instruction_tokens=40"]))
    echo = load_config(EvolveConfig, "configs/tiny.yaml", [*overrides, "generation.backend=echo"])
    check_prompt_budget(echo)  # echo cuts nothing: no limit to check


BUDGET = ["seeds.max_instruction_tokens=100", "generation.max_prompt_tokens=250"]
TOO_SMALL = ("config error: generation.max_prompt_tokens: 250 cannot hold an evolve prompt: 200 tokens of template + "
             "100 tokens of instructions (seeds.max_instruction_tokens, evolve.evolve_sampling.max_tokens) + 8 = 308")


def test_an_s3_models_prompt_budget_is_checked_on_the_driver_with_its_tokenizer_files_only(tmp_path, moto_s3):
    from transformers import AutoTokenizer

    from common.models import SMALL_MODEL_ALIAS, resolve_model

    AutoTokenizer.from_pretrained(resolve_model(SMALL_MODEL_ALIAS)).save_pretrained(tmp_path / "tok")
    for f in (tmp_path / "tok").iterdir():  # the tokenizer, no weights: the driver must not need them
        moto_s3.client().upload_file(str(f), moto_s3.bucket, f"budget-model/{f.name}")
    cfg = load_config(EvolveConfig, "configs/tiny.yaml",
                      [*BUDGET, f"generation.model={moto_s3.url('budget-model')}", f"output.path={tmp_path / 'out'}"])
    with pytest.raises(UserError) as info:  # the word bound alone (116 words) let this through
        check_prompt_budget(cfg)
    assert str(info.value) == TOO_SMALL


def test_a_hub_model_the_driver_cannot_reach_is_checked_by_the_actor_with_its_engines_tokenizer(monkeypatch):
    from transformers import AutoTokenizer

    from common.models import SMALL_MODEL_ALIAS, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a driver without the hub
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", [*BUDGET, "generation.model=nobody/not-cached-model"])
    check_prompt_budget(cfg)  # nothing to read on the driver: the config's word bound stands
    engine_tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMALL_MODEL_ALIAS))
    with pytest.raises(UserError) as info:  # what EvolveActor runs as it starts, with its engine's tokenizer
        check_prompt_budget(cfg, engine_tokenizer, engine_tokenizer)
    assert str(info.value) == TOO_SMALL


def test_a_large_parquet_file_is_read_a_record_batch_at_a_time_with_exact_row_numbers(tmp_path):
    import pyarrow.parquet as pq

    from evol.seeds import PARQUET_PIECE_ROWS

    n = PARQUET_PIECE_ROWS + 5
    table = pa.table({"instruction": [f"Task {i}." for i in range(n)], "id": [f"p{i}" for i in range(n)]})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=PARQUET_PIECE_ROWS // 2)
    pieces = _read(tmp_path)
    assert len(pieces) >= 2 and max(len(piece) for piece in pieces) <= PARQUET_PIECE_ROWS  # never one whole table
    rows = [row for piece in pieces for row in piece]
    assert [row["line"] for row in rows] == list(range(n)) and rows[-1]["seed_id"] == f"p{n - 1}"
    assert all(row["error"] is None for row in rows)
    (tmp_path / "big.parquet").write_bytes((tmp_path / "big.parquet").read_bytes()[: 1000])  # cut: corrupt
    (bad,) = [row for piece in _read(tmp_path) for row in piece]
    assert bad["error"] == "unreadable_file" and bad["line"] == 0
