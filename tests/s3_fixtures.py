"""A local moto S3 server for tests: `from tests.s3_fixtures import moto_s3  # noqa: F401`."""
from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

BUCKET = "evolray-test"
_active: dict[str, str] = {}


@dataclass(frozen=True)
class MotoS3:
    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        """s3://<bucket>/<parts...>"""
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under a prefix, sorted (boto3, so it does not trust the code under test)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def s3_env() -> dict[str, str]:
    """The variables that point boto3 and pyarrow at the running moto server.

    For Ray: `ray.init(runtime_env={"env_vars": s3_env()})`, or a subprocess env.
    """
    if not _active:
        raise RuntimeError("s3_env() needs the moto_s3 fixture to be active")
    return dict(_active)


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    """A moto S3 server on 127.0.0.1 (a free port) with one empty bucket, for one test module.

    It sets AWS_ENDPOINT_URL, fake credentials and the region in os.environ (restored after),
    which boto3 and pyarrow in this process read. Ray workers do NOT see it if Ray started
    before this fixture (a session-scoped `local_ray`, say): start Ray after it, or pass
    `runtime_env={"env_vars": s3_env()}` to ray.init, or the env of a job subprocess.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}  # no 1-2 s wait on the instance-metadata endpoint
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _active.update(env)
    s3 = MotoS3(endpoint=env["AWS_ENDPOINT_URL"], bucket=BUCKET)
    try:
        # moto's backends are global to the process: without a reset, a module sees earlier modules' keys
        urllib.request.urlopen(urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST"))
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        _active.clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
