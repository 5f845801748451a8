"""Credentials the driver reads by name, so that they never travel in a job's runtime env.

`ray job submit --runtime-env-json '{"env_vars": {"OPENAI_API_KEY": ...}}'` stores the key with
the job: `ray job list` and the dashboard show it to anyone who can reach them. A reference such
as `aws-secretsmanager:evolray/openai` names where the key lives instead; the driver reads it
there (boto3, with the node's instance profile) and hands it to its actors as a Secret.

References: `aws-secretsmanager:NAME` (the secret's string; `NAME#FIELD` for one field of a JSON
secret), `aws-ssm:NAME` (a Parameter Store parameter, SecureString decrypted) or `file:PATH` (a
file on the node that runs the driver, e.g. the head; surrounding whitespace stripped).
"""
from __future__ import annotations

import json
import os

from common.config import UserError

SOURCES = ("aws-secretsmanager", "aws-ssm", "file")


def reference_problem(ref: str) -> str | None:
    """Why `ref` is not a secret reference (checked at config time, no I/O), or None."""
    source, sep, name = ref.partition(":")
    if not sep or source not in SOURCES or not name.strip():
        return f"{ref!r} is not SOURCE:NAME with SOURCE one of {', '.join(SOURCES)}"
    return None


def read_secret(ref: str, key: str) -> str:
    """The secret's value; a UserError naming config key `key` (never the value) if it cannot be read."""
    problem = reference_problem(ref)
    if problem:
        raise UserError(f"{key}: {problem}")
    source, _, name = ref.partition(":")
    try:
        value = _READERS[source](name)
    except UserError as exc:
        raise UserError(f"{key}: {ref}: {exc}") from None
    if not value:
        raise UserError(f"{key}: {ref} is empty")
    return value


def _read_file(path: str) -> str:
    try:
        with open(os.path.expanduser(path)) as f:
            return f.read().strip()
    except OSError as exc:
        raise UserError(f"cannot read the file ({exc.strerror})") from None


def _read_secrets_manager(name: str) -> str:
    secret_id, _, field = name.partition("#")
    value = _aws_call("secretsmanager", "get_secret_value", SecretId=secret_id).get("SecretString") or ""
    if not field:
        return value
    try:
        return str(json.loads(value)[field])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"the secret is not a JSON object with the field {field!r}") from None


def _read_ssm(name: str) -> str:
    return _aws_call("ssm", "get_parameter", Name=name, WithDecryption=True)["Parameter"]["Value"]


def _aws_call(service: str, method: str, **kwargs) -> dict:
    """One boto3 call; its failures as one line the user can act on (the value is never in it)."""
    import boto3
    from botocore import exceptions as bex
    from botocore.config import Config

    try:
        client = boto3.session.Session().client(service, config=Config(
            connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}))
        return getattr(client, method)(**kwargs)
    except bex.NoCredentialsError:
        raise UserError("no AWS credentials found (instance profile, AWS_PROFILE or AWS_ACCESS_KEY_ID)") from None
    except bex.NoRegionError:
        raise UserError("no AWS region configured (set AWS_DEFAULT_REGION)") from None
    except bex.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "unknown")
        raise UserError(f"{service} refused it ({code})") from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
        raise UserError(f"cannot reach {service} ({type(exc).__name__})") from None
    except bex.BotoCoreError as exc:
        raise UserError(f"{type(exc).__name__}") from None


_READERS = {"aws-secretsmanager": _read_secrets_manager, "aws-ssm": _read_ssm, "file": _read_file}
