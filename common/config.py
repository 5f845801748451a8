"""One config object per job: YAML file + dotted CLI overrides, validated before any work.

Every job schema is a tree of frozen pydantic models that reject unknown keys, so a typo
or a bad value is a one-line error naming the key, raised before Ray or a model starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors and configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_blank(value: str) -> str:
    if not value.strip():  # "" is the working folder to every file API: a job would read or write all of it
        raise ValueError("is empty: a path (local or s3://) or a name is needed")
    return value


PathText = Annotated[str, AfterValidator(_not_blank)]  # a path or a model name: never blank


class UserError(Exception):
    """A mistake of the user (bad config, unreadable input): shown as one line, no traceback."""


class ConfigError(UserError):
    pass


def set_dotted(data: dict, dotted_key: str, value: Any) -> None:
    """Set `a.b.c=value` inside nested dicts, creating missing sections."""
    parts = dotted_key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"config error: {'.'.join(parts[: i + 1])} is a value, not a section "
                              f"(cannot set {dotted_key})")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value`; the value is parsed as YAML so numbers, booleans and lists work."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"config error: override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def format_validation_error(error: ValidationError) -> str:
    """First problem as `config error: a.b: message (got X)`; the count of the others if any."""
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict):
            message += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
    where = f"{key}: " if key else ""
    return f"config error: {where}{message}" + (f" (and {more} more)" if more else "")


def read_yaml_mapping(path: str | Path) -> dict:
    """A config file's sections; ValueError with one line (the caller names the key or file)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of sections")
    return data


def load_config(schema: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    data: dict = {}
    if path is not None:
        try:
            data = read_yaml_mapping(path)
        except ValueError as exc:
            raise ConfigError(f"config error: {exc}") from None
    for text in overrides:
        set_dotted(data, *parse_override(text))
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def run_job(schema: type[T], job: Callable[[T], Any], description: str, argv: list[str] | None = None,
            estimate: Callable[[T], Any] | None = None) -> int:
    """Entry-point glue shared by jobs/*: parse args, load config, run, map user errors to exit 2.
    `estimate`: what `--estimate` runs instead of the job (it prints the cost; no model is called)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    if estimate is not None:
        parser.add_argument("--estimate", action="store_true",
                            help="print the requests, tokens and money the config would spend, and stop")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. evolve.rounds=2")
    args = parser.parse_args(argv)
    try:
        config = load_config(schema, args.config, args.overrides)
        (estimate if getattr(args, "estimate", False) else job)(config)
    except UserError as exc:
        print(f"error: {exc}" if not str(exc).startswith("config error") else str(exc), file=sys.stderr)
        return 2
    return 0
