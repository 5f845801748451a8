"""A test set on s3:// (a local moto server): a file and a folder read through the same mapping,
bad rows quarantined, a missing key a one-line error."""
import json

import pytest

from common.config import UserError
from eval.testset import EMPTY_INSTRUCTION, MALFORMED_JSON, ItemFields, read_testset, select_items
from tests.s3_fixtures import moto_s3  # noqa: F401 (a fixture)

FIELDS = ItemFields(instruction="question", id="qid", category="topic", difficulty="level")
ROWS = [{"qid": "q1", "question": "Name a prime.", "topic": "math", "level": 2},
        {"qid": "q2", "question": " ", "topic": "math"},
        {"qid": "q3", "question": "Write a limerick.", "topic": "poetry", "level": 6}]


def put(s3, key: str, text: str) -> str:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=text.encode())
    return s3.url(key)


def test_test_set_file_and_folder_on_s3(moto_s3):  # noqa: F811
    path = put(moto_s3, "tests/set/part-1.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS) + "{oops\n")
    put(moto_s3, "tests/set/part-2.json", json.dumps([{"qid": "q4", "question": "Sort a list.", "topic": "code"}]))
    rows = read_testset(path, FIELDS)
    assert [(r["id"], r["error"]) for r in rows] == \
        [("q1", None), ("q2", EMPTY_INSTRUCTION), ("q3", None), (f"{path}:4", MALFORMED_JSON)]
    folder = read_testset(moto_s3.url("tests", "set"), FIELDS)
    assert [(i["id"], i["category"], i["difficulty"]) for i in select_items(folder)] == \
        [("q1", "math", 2), ("q3", "poetry", 6), ("q4", "code", None)]
    with pytest.raises(UserError, match="does not exist"):
        read_testset(moto_s3.url("tests", "nope.jsonl"), FIELDS)


@pytest.mark.parametrize("key", ["testset.path", "output.path", "evolution.output"])
def test_an_unreachable_endpoint_is_one_line_for_every_s3_path_of_evaluate(moto_s3, monkeypatch, capsys, tmp_path,  # noqa: F811
                                                                          key):
    """The evaluate job never checked its s3:// paths first: a pyarrow traceback instead."""
    import socket

    from jobs.evaluate import main

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    path = moto_s3.url("set.jsonl" if key == "testset.path" else "folder")
    code = main(["--config", "configs/evaluate_tiny.yaml", "candidate.backend=echo", f"{key}={path}",
                 *([] if key == "output.path" else [f"output.path={tmp_path / 'out'}"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"error: {key}: {path}: cannot reach the S3 endpoint http://127.0.0.1:{port} "
                                 "(EndpointConnectionError)")
