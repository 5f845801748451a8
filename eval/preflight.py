"""The evaluate job's checks before Ray and before any model: the test set and its field mapping,
every role's model and prompt format, the output folder. Each fails in a second with a UserError
that names the config key, not after a model load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from common import storage
from common.config import UserError
from common.models import pin_local_model
from common.s3 import preflight_s3
from common.tokenizer import load_tokenizer
from eval.budget import TRUNCATING_BACKENDS
from eval.config import EvaluateConfig
from eval.evolution import decontamination_warning, records_folder
from eval.sections import FIGURE_BANDS, FIGURE_CATEGORIES, FIGURE_EVOLUTION
from eval.testset import (check_mapping, dropped_counts, quarantine_counts, read_testset, resolve_testset_path,
                          select_items, testset_files)
from generation import GenerationConfig, check_model_available

JOB = "evaluate"
# An earlier run's results, replaced by every run (cached answers, verdicts and grades stay).
RESULTS = ("report.md", "report.html", "items.parquet", "difficulty.parquet", "quarantine.parquet", "summary.json",
           "config.yaml", FIGURE_BANDS, FIGURE_CATEGORIES, FIGURE_EVOLUTION)


@dataclass(frozen=True)
class Prepared:
    items: list[dict]       # the items to evaluate
    rows: list[dict]        # every row read (quarantined ones too)
    testset: dict           # counts for the report
    tokenizers: dict        # role -> its engine's tokenizer read here, or None (see role_tokenizer)


def role_tokenizer(gen: GenerationConfig):
    """The tokenizer a role's engine uses, read on the driver without the weights (an s3 folder's
    tokenizer files only), or None: echo, an openai endpoint without `openai.tokenizer`, or a hub id
    this driver cannot reach (the actors then use their own)."""
    name = gen.model if gen.backend in TRUNCATING_BACKENDS else gen.openai.tokenizer if gen.backend == "openai" \
        else None
    if name is None:
        return None
    try:
        return load_tokenizer(pin_local_model(name))
    except OSError:
        if os.path.isdir(os.path.expanduser(name)):
            raise UserError(f"cannot read the tokenizer of the model folder {name}") from None
        return None


def check_prompt_format(gen: GenerationConfig, role: str, tokenizer) -> None:
    """`chat` renders the tokenizer's chat template; a tokenizer without one is a mistake to name here,
    not a silent other format (a Vicuna or LLaMA base model has none)."""
    if gen.prompt_format == "chat" and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{role}.prompt_format: chat, but the tokenizer of {gen.model} has no chat template; set the "
                        "format the model was trained with: wizardlm, vicuna_v1.1, alpaca or plain")


def read_items(cfg: EvaluateConfig) -> tuple[list[dict], list[dict], dict]:
    """(items to evaluate, every row read, the test set's counts); a wrong mapping or a set without
    usable items is a UserError."""
    path = resolve_testset_path(cfg.testset.path)
    preflight_s3(path, "testset.path", write=False)  # an unreachable endpoint: one line, not pyarrow's traceback
    rows = read_testset(path, cfg.testset.fields())
    check_mapping(rows, cfg.testset.fields(), cfg.testset.path)
    items = select_items(rows, cfg.testset.limit, cfg.testset.per_category)
    quarantined = quarantine_counts(rows)
    if not items:
        raise UserError(f"testset.path: {cfg.testset.path} has no usable items "
                        f"({len(rows)} rows, quarantined: {quarantined or 'none'})")
    info = {"path": cfg.testset.path, "rows": len(rows), "used": len(items), "quarantined": quarantined,
            "dropped_fields": dropped_counts(rows)}
    return items, rows, info


def preflight(cfg: EvaluateConfig) -> Prepared:
    """Every check that needs no Ray and no model."""
    preflight_s3(cfg.output.path, "output.path", write=True)
    if cfg.evolution.output:
        preflight_s3(cfg.evolution.output, "evolution.output", write=False)
        records_folder(cfg.evolution.output)  # before prepare_output replaces the last run's report
    items, rows, info = read_items(cfg)
    tokenizers = {}
    for role, gen in cfg.roles().items():
        check_model_available(gen, role)
        tokenizers[role] = role_tokenizer(gen) if gen.backend in TRUNCATING_BACKENDS else None
        check_prompt_format(gen, role, tokenizers[role])
    prepare_output(cfg, [resolve_testset_path(cfg.testset.path), cfg.evolution.output]
                   + [gen.model for gen in cfg.roles().values()])
    warning = decontamination_warning(cfg.evolution.output, testset_files(resolve_testset_path(cfg.testset.path)))
    if warning:  # the training data was not checked against this test set
        print(f"warning: {warning}", flush=True)
        info["decontamination_warning"] = warning
    return Prepared(items, rows, info, tokenizers)


def prepare_output(cfg: EvaluateConfig, inputs: list[str | None]) -> None:
    """The output folder is an evaluate run's own (owner marker): a rerun reuses its cached
    answers; overwrite empties it first, never when it holds an input. A folder of anything else
    is neither written into nor deleted."""
    path = cfg.output.path
    if cfg.output.overwrite:
        out = storage.absolute(path).rstrip("/")
        inside = [p for p in inputs if p and storage.absolute(p).startswith(out + "/")]
        if inside:
            raise UserError(f"output.path: {path} holds an input ({inside[0]}); choose another folder")
        storage.delete_owned_dir(path, JOB)
    elif storage.is_nonempty_dir(path) and storage.owner(path) != JOB:
        raise UserError(f"output.path: {path} holds files of something else than an evaluate run; "
                        "choose another folder")
    for name in RESULTS:  # an earlier run's results go; its cached answers stay
        if storage.exists(storage.join(path, name)):
            filesys, inner = storage.filesystem(storage.join(path, name))
            filesys.delete_file(inner)
    storage.check_writable(path)
    storage.mark_owned(path, JOB)
