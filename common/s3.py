"""Fail-fast S3 checks with boto3, run on the driver before Ray starts or any GPU is asked for.

pyarrow's S3 errors surface late (inside a worker, after a model load) and say little, so a
missing bucket, missing credentials, a denied read or write, or an unreachable endpoint is
found here first and reported as one line naming the config key and the path. boto3 reads
AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_S3) itself, as pyarrow's S3 filesystem does.
"""
from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from common.config import UserError

PROBE_NAME = ".evolray-preflight"
# Short timeouts and two attempts: a wrong endpoint must fail in seconds, not minutes.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 10
MAX_ATTEMPTS = 2


def make_client(access_key: str | None = None, secret_key: str | None = None) -> Any:
    """A fresh S3 client (a fresh session, so credentials changed since the last call count)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                    retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"})
    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    return session.client("s3", config=config)


def split_s3(path: str) -> tuple[str, str, str | None, str | None]:
    """(bucket, key prefix, access key, secret key) of s3://[access:secret@]bucket/prefix."""
    parts = urlsplit(path)
    return parts.hostname or "", parts.path.lstrip("/"), parts.username, parts.password


def redact(path: str) -> str:
    """The path as it may be printed: pyarrow accepts s3://access:secret@bucket/..., we never show it."""
    if "://" not in path or "@" not in path.split("://", 1)[1].split("/", 1)[0]:
        return path
    scheme, rest = path.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def preflight_s3(path: str, key: str, write: bool,
                 client_factory: Callable[..., Any] = make_client) -> None:
    """Check that `path` (the value of config key `key`) can be read, and written when `write`.

    A local path (or any other scheme) is a no-op. Raises UserError with one line.
    """
    if not path.startswith("s3://"):
        return
    bucket, prefix, access_key, secret_key = split_s3(path)
    fail = _failer(key, path)
    if not bucket:
        raise fail("no bucket in the path")
    try:
        client = client_factory(access_key, secret_key)
    except Exception as exc:  # botocore's ValueError for a malformed AWS_ENDPOINT_URL, partial keys
        raise fail(f"cannot create an S3 client: {str(exc).splitlines()[0]}") from None
    endpoint = client.meta.endpoint_url
    _call(fail, endpoint, "bucket", bucket, client.head_bucket, Bucket=bucket)
    listed = _call(fail, endpoint, "list", bucket, client.list_objects_v2, Bucket=bucket, Prefix=prefix, MaxKeys=1)
    if write:
        probe = f"{prefix.rstrip('/')}/{PROBE_NAME}".lstrip("/")
        _call(fail, endpoint, "write", bucket, client.put_object, Bucket=bucket, Key=probe, Body=b"")
        _call(fail, endpoint, "delete", bucket, client.delete_object, Bucket=bucket, Key=probe)
    elif listed.get("Contents"):
        first = listed["Contents"][0]["Key"]
        _call(fail, endpoint, "read", bucket, client.head_object, Bucket=bucket, Key=first)


def list_objects(path: str, key: str) -> list[list]:
    """[key under the folder, size, ETag] of every object under the s3:// folder `path` (the value of
    config key `key`), sorted: what identifies its contents (a re-upload changes the ETag)."""
    bucket, prefix, access_key, secret_key = split_s3(path)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    fail = _failer(key, path)
    client = make_client(access_key, secret_key)
    pages = _call(fail, client.meta.endpoint_url, "list", bucket, lambda: list(
        client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)))
    return sorted([obj["Key"][len(prefix):], obj["Size"], obj["ETag"].strip('"')]
                  for page in pages for obj in page.get("Contents", []))


def _failer(key: str, path: str) -> Callable[[str], UserError]:
    return lambda reason: UserError(f"{key}: {redact(path)}: {reason}")


_DENIED = {"bucket": "access denied to bucket {bucket}", "list": "access denied: cannot list objects",
           "read": "access denied: cannot read objects", "write": "access denied: cannot write objects",
           "delete": "access denied: cannot delete objects"}
_REJECTED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}


def _call(fail: Callable[[str], UserError], endpoint: str, action: str, bucket: str,
          method: Callable[..., Any], **kwargs: Any) -> Any:
    """One boto3 call, its failures turned into the one-line reasons users can act on."""
    from botocore import exceptions as bex

    try:
        return method(**kwargs)
    except bex.NoCredentialsError:
        raise fail("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                   "or AWS_PROFILE)") from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError,
            bex.ConnectionClosedError) as exc:
        raise fail(f"cannot reach the S3 endpoint {endpoint} ({type(exc).__name__})") from None
    except bex.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise fail(f"bucket {bucket} does not exist") from None
        if code in ("403", "AccessDenied", "AllAccessDisabled"):
            raise fail(_DENIED[action].format(bucket=bucket)) from None
        if code in _REJECTED:
            raise fail(f"the AWS credentials were rejected ({code})") from None
        raise fail(f"S3 error {code or 'unknown'} on {action}") from None
    except bex.BotoCoreError as exc:
        raise fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
