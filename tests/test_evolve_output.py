"""A bucket's files agree after any rewrite, and the end-of-job check compares the training files with
the records (no Ray)."""
import pyarrow.parquet as pq

from evol.accounting import accounting, accounting_error
from evol.output import training_file_check, write_bucket
from evol.records import ERROR, KEPT, empty_record


def _seed(seed_id: str, status: str = KEPT) -> dict:
    return empty_record(id=seed_id, root_id=seed_id, round=0, op="seed", instruction=f"Task {seed_id}.",
                        response="Done." if status == KEPT else None, status=status,
                        reason=None if status == KEPT else "http_503")


def test_a_bucket_written_again_without_training_rows_leaves_no_stale_training_file(tmp_path):
    out = str(tmp_path)
    write_bucket(out, 3, [_seed("a"), _seed("b")], train_on_truncated=False)
    assert pq.read_table(tmp_path / "training" / "parquet" / "bucket-00003.parquet").num_rows == 2
    write_bucket(out, 3, [_seed("a", ERROR), _seed("b", ERROR)], train_on_truncated=False)
    assert not (tmp_path / "training" / "parquet" / "bucket-00003.parquet").exists()
    assert not (tmp_path / "training" / "jsonl" / "bucket-00003.jsonl").exists()
    assert training_file_check(out) == (0, [])


def test_the_end_check_counts_training_file_rows_and_finds_files_without_records(tmp_path):
    out = str(tmp_path)
    write_bucket(out, 1, [_seed("a"), _seed("b"), _seed("c", ERROR)], train_on_truncated=False)
    write_bucket(out, 2, [_seed("d")], train_on_truncated=False)
    (tmp_path / "records" / "bucket-00002.parquet").unlink()  # a kill between the training and record writes
    rows, orphans = training_file_check(out)
    assert (rows, orphans) == (2, ["bucket-00002.parquet", "bucket-00002.jsonl"])
    check = accounting(3, 3, [], [], training=(2, rows, orphans))
    assert not check["ok"] and accounting_error(check).endswith(
        "; 2 training rows in the records but 2 in the training files, files without records: "
        "['bucket-00002.parquet', 'bucket-00002.jsonl']")
    assert not accounting(3, 3, [], [], training=(3, 2, []))["ok"] and accounting(3, 3, [], [], training=(2, 2, []))["ok"]
