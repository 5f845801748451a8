"""The storage layer on s3:// (a local moto server) and on local paths with `~`, and the boto3
preflight's one-line errors: missing bucket, no credentials, access denied, unreachable endpoint.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import time

import pytest

from common import storage
from common.config import UserError
from common.s3 import make_client, preflight_s3
from tests.s3_fixtures import BUCKET, moto_s3, s3_env  # noqa: F401


def test_text_and_json_round_trip_on_s3(moto_s3):
    storage.write_text(moto_s3.url("rt/notes.txt"), "héllo\nworld\n")
    storage.write_json(moto_s3.url("rt/summary.json"), {"rows": 3, "ok": True})
    assert storage.read_text(moto_s3.url("rt/notes.txt")) == "héllo\nworld\n"
    assert storage.read_text(moto_s3.url("rt/summary.json")) == '{\n  "rows": 3,\n  "ok": true\n}\n'
    got = moto_s3.client().get_object(Bucket=BUCKET, Key="rt/summary.json")["Body"].read()
    assert json.loads(got) == {"rows": 3, "ok": True}


def test_exists_and_folder_checks_on_s3(moto_s3):
    storage.write_text(moto_s3.url("ex/a/b.txt"), "b")
    assert [storage.exists(moto_s3.url(p)) for p in ("ex/a/b.txt", "ex/a", "ex/none")] == [True, True, False]
    assert [storage.is_dir(moto_s3.url(p)) for p in ("ex/a/b.txt", "ex/a", "ex/none")] == [False, True, False]
    assert [storage.is_nonempty_dir(moto_s3.url(p)) for p in ("ex", "ex/a/b.txt", "ex/none")] == [True, False, False]


def test_list_files_on_s3_recursive_and_missing(moto_s3):
    for name in ("lf/x.jsonl", "lf/sub/y.parquet", "lfx/not-mine.txt"):
        storage.write_text(moto_s3.url(name), name)
    assert storage.list_files(moto_s3.url("lf")) == [moto_s3.url("lf/sub/y.parquet"), moto_s3.url("lf/x.jsonl")]
    assert storage.list_files(moto_s3.url("never/written")) == []


def test_delete_owned_dir_on_s3_refuses_a_foreign_folder(moto_s3):
    storage.write_text(moto_s3.url("foreign/data.csv"), "a,b\n")
    with pytest.raises(UserError) as info:
        storage.delete_owned_dir(moto_s3.url("foreign"), "evolve")
    assert str(info.value) == ("output.path: s3://evolray-test/foreign was not created by an evolray evolve run; "
                               "refusing to delete it")
    storage.mark_owned(moto_s3.url("trained"), "train")
    with pytest.raises(UserError) as info:
        storage.delete_owned_dir(moto_s3.url("trained"), "evolve", key="evol.output.path")
    assert str(info.value) == ("evol.output.path: s3://evolray-test/trained was not created by an evolray evolve "
                               "run; refusing to delete it")
    assert moto_s3.keys("foreign") == ["foreign/data.csv"]
    assert moto_s3.keys("trained") == ["trained/.evolray-job"]


def test_delete_owned_dir_on_s3_empties_only_its_own_folder(moto_s3):
    storage.mark_owned(moto_s3.url("out/run"), "evolve")
    storage.write_text(moto_s3.url("out/run/records/part-0.parquet"), "p")
    storage.write_text(moto_s3.url("out/run-other/keep.txt"), "k")  # same prefix, another folder
    assert storage.owner(moto_s3.url("out/run")) == "evolve"
    storage.delete_owned_dir(moto_s3.url("out/run"), "evolve")
    assert moto_s3.keys("out/run/") == ["out/run/"]  # pyarrow keeps the emptied folder as a marker object
    assert storage.owner(moto_s3.url("out/run")) is None
    assert storage.list_files(moto_s3.url("out")) == [moto_s3.url("out/run-other/keep.txt")]


def test_write_bytes_atomic_on_s3_replaces_the_object(moto_s3):
    target = moto_s3.url("atomic/shard-00001.done")
    storage.write_bytes_atomic(target, b"first")
    storage.write_bytes_atomic(target, b"second")
    assert storage.read_text(target) == "second"
    assert moto_s3.keys("atomic/") == ["atomic/shard-00001.done"]


def test_s3_env_names_the_server_for_ray_workers(moto_s3):
    env = s3_env()
    assert env["AWS_ENDPOINT_URL"] == moto_s3.endpoint == os.environ["AWS_ENDPOINT_URL"]
    assert {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")} == {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_tilde_is_expanded_by_every_local_function(home):
    storage.write_text("~/out/a/b.txt", "b")
    storage.write_json("~/out/c.json", [1])
    storage.write_bytes_atomic("~/out/d.bin", b"d")
    assert (home / "out" / "a" / "b.txt").read_text() == "b"
    assert storage.read_text("~/out/c.json") == "[\n  1\n]\n"
    assert storage.absolute("~/out") == str(home / "out")
    assert storage.filesystem("~/out")[1] == str(home / "out")
    assert (storage.exists("~/out/d.bin"), storage.is_dir("~/out/a"), storage.is_nonempty_dir("~/out")) == (
        True, True, True)
    assert storage.list_files("~/out") == [str(home / "out" / n) for n in ("a/b.txt", "c.json", "d.bin")]
    storage.check_writable("~/out")
    storage.mark_owned("~/out", "evolve")
    storage.delete_owned_dir("~/out", "evolve")
    assert list((home / "out").iterdir()) == []


def test_local_list_files_of_a_missing_folder_is_empty(tmp_path):
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_local_write_bytes_atomic_leaves_no_temp_file(tmp_path):
    target = tmp_path / "deep" / "marker.done"
    storage.write_bytes_atomic(str(target), b"one")
    storage.write_bytes_atomic(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["marker.done"]


def test_local_write_bytes_atomic_gives_the_mode_of_an_ordinary_new_file(tmp_path):
    """mkstemp makes 0600 files: the records, reports and figures of a run were unreadable to the group."""
    old = os.umask(0o027)
    try:
        storage.write_bytes_atomic(str(tmp_path / "records.parquet"), b"x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "records.parquet").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o640


def test_local_delete_owned_dir_refuses_and_keeps_files(tmp_path):
    (tmp_path / "mine" / "sub").mkdir(parents=True)
    (tmp_path / "mine" / "sub" / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError) as info:
        storage.delete_owned_dir(str(tmp_path / "mine"), "evolve")
    assert str(info.value) == (f"output.path: {tmp_path}/mine was not created by an evolray evolve run; "
                               "refusing to delete it")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError) as info:
        storage.delete_owned_dir(str(tmp_path / "file.txt"), "evolve")
    assert str(info.value) == f"output.path: {tmp_path}/file.txt is a file, not a folder; refusing to delete it"
    storage.delete_owned_dir(str(tmp_path / "missing"), "evolve")  # nothing there: nothing to do
    assert (tmp_path / "mine" / "sub" / "thesis.tex").read_text() == "years of work"
    assert (tmp_path / "file.txt").read_text() == "x"


def test_preflight_of_a_local_path_does_nothing(tmp_path):
    preflight_s3(str(tmp_path / "missing" / "folder"), "output.path", write=True)


def test_preflight_passes_on_a_readable_writable_bucket_and_leaves_no_probe(moto_s3):
    storage.write_text(moto_s3.url("pf/seeds.jsonl"), "{}\n")
    preflight_s3(moto_s3.url("pf/seeds.jsonl"), "seeds.path", write=False)
    preflight_s3(moto_s3.url("pf/out"), "output.path", write=True)
    preflight_s3(f"s3://{BUCKET}", "output.path", write=True)  # a bucket root
    assert moto_s3.keys("pf/") == ["pf/seeds.jsonl"]
    assert ".evolray-preflight" not in moto_s3.keys()


def test_preflight_missing_bucket(moto_s3):
    with pytest.raises(UserError) as info:
        preflight_s3("s3://no-such-bucket/p", "output.path", write=True)
    assert str(info.value) == "output.path: s3://no-such-bucket/p: bucket no-such-bucket does not exist"


def test_preflight_never_prints_credentials_of_the_path(moto_s3):
    with pytest.raises(UserError) as info:
        preflight_s3("s3://AKIDEXAMPLE:wJalrXUtnFEMI@no-such-bucket/p", "seeds.path", write=False)
    assert str(info.value) == "seeds.path: s3://***@no-such-bucket/p: bucket no-such-bucket does not exist"


def test_preflight_without_credentials(moto_s3, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(UserError) as info:
        preflight_s3(moto_s3.url("out"), "output.path", write=True)
    assert str(info.value) == ("output.path: s3://evolray-test/out: no AWS credentials found "
                               "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")


def test_preflight_unreachable_endpoint_fails_fast(moto_s3, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        preflight_s3(moto_s3.url("out"), "output.path", write=True)
    assert str(info.value) == (f"output.path: s3://evolray-test/out: cannot reach the S3 endpoint "
                               f"http://127.0.0.1:{port} (EndpointConnectionError)")
    assert time.monotonic() - start < 5


def stubbed(*calls):
    """A client factory whose client answers `calls` in order: (operation, error code or None, response)."""
    from botocore.stub import Stubber

    def factory(access_key=None, secret_key=None):
        client = make_client(access_key, secret_key)
        stub = Stubber(client)
        for operation, code, response in calls:
            if code is None:
                stub.add_response(operation, response)
            else:
                stub.add_client_error(operation, service_error_code=code, http_status_code=403)
        stub.activate()
        return client
    return factory


OK_BUCKET = ("head_bucket", None, {})
OK_LIST = ("list_objects_v2", None, {"KeyCount": 0})


@pytest.mark.parametrize("write, calls, reason", [
    (False, [("head_bucket", "403", {})], "access denied to bucket evolray-test"),
    (False, [OK_BUCKET, ("list_objects_v2", "AccessDenied", {})], "access denied: cannot list objects"),
    (False, [OK_BUCKET, ("list_objects_v2", None, {"Contents": [{"Key": "in/a.jsonl"}]}),
             ("head_object", "403", {})], "access denied: cannot read objects"),
    (True, [OK_BUCKET, OK_LIST, ("put_object", "AccessDenied", {})], "access denied: cannot write objects"),
    (True, [OK_BUCKET, OK_LIST, ("put_object", None, {}), ("delete_object", "AccessDenied", {})],
     "access denied: cannot delete objects"),
])
def test_preflight_access_denied(moto_s3, write, calls, reason):
    with pytest.raises(UserError) as info:
        preflight_s3(moto_s3.url("in"), "seeds.path", write=write, client_factory=stubbed(*calls))
    assert str(info.value) == f"seeds.path: s3://evolray-test/in: {reason}"
