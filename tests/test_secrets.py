"""An openai key read by name on the driver (AWS Secrets Manager, SSM Parameter Store, a file on the
head) instead of an environment variable that `ray job submit` would store with the job."""
import json

import boto3
import pytest
from pydantic import ValidationError

from common.config import UserError
from common.secrets import read_secret
from generation import GenerationConfig, check_model_available, driver_api_key
from tests.s3_fixtures import moto_s3  # noqa: F401

KEY = "sk-rehearsal-0123456789abcdef"


def _openai(ref: str) -> GenerationConfig:
    return GenerationConfig(backend="openai", model="gpt-4o", openai={"api_key_env": "EVOLRAY_UNSET_KEY",
                                                                     "api_key_secret": ref})


def test_key_read_from_secrets_manager_ssm_and_a_file_by_the_generation_layer(moto_s3, tmp_path, monkeypatch):
    monkeypatch.delenv("EVOLRAY_UNSET_KEY", raising=False)
    boto3.client("secretsmanager", endpoint_url=moto_s3.endpoint).create_secret(Name="evolray/openai", SecretString=KEY)
    boto3.client("secretsmanager", endpoint_url=moto_s3.endpoint).create_secret(
        Name="evolray/all", SecretString=json.dumps({"OPENAI_API_KEY": KEY, "other": "x"}))
    boto3.client("ssm", endpoint_url=moto_s3.endpoint).put_parameter(Name="/evolray/openai", Value=KEY,
                                                                      Type="SecureString")
    (tmp_path / "key").write_text(f"{KEY}\n")
    for ref in ("aws-secretsmanager:evolray/openai", "aws-secretsmanager:evolray/all#OPENAI_API_KEY",
                "aws-ssm:/evolray/openai", f"file:{tmp_path / 'key'}"):
        cfg = _openai(ref)
        check_model_available(cfg, "judge")  # the preflight finds the key without the environment variable
        assert driver_api_key(cfg).reveal() == KEY, ref


def test_an_unreadable_secret_is_one_line_naming_the_key_and_never_the_value(moto_s3, tmp_path):
    boto3.client("secretsmanager", endpoint_url=moto_s3.endpoint).create_secret(Name="evolray/json",
                                                                                SecretString=json.dumps({"a": KEY}))
    cases = {"aws-secretsmanager:evolray/missing": "ResourceNotFoundException",
             "aws-ssm:/evolray/missing": "ParameterNotFound",
             f"file:{tmp_path / 'nothing'}": "cannot read the file",
             "aws-secretsmanager:evolray/json#b": "not a JSON object with the field 'b'",
             }
    for ref, reason in cases.items():
        with pytest.raises(UserError) as caught:
            check_model_available(_openai(ref), "judge")
        message = str(caught.value)
        assert message.startswith(f"judge.openai.api_key_secret: {ref}: ") and reason in message, message
        assert KEY not in message and "\n" not in message
    with pytest.raises(UserError, match="is empty"):
        (tmp_path / "empty").write_text("\n")
        read_secret(f"file:{tmp_path / 'empty'}", "judge.openai.api_key_secret")


def test_a_reference_of_an_unknown_kind_is_a_config_error():
    with pytest.raises(ValidationError, match="not SOURCE:NAME with SOURCE one of aws-secretsmanager, aws-ssm, file"):
        _openai("vault:evolray/openai")
