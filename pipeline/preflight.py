"""The pipeline's checks before its first stage: everything that needs no model, for every stage
that will run, so that a misspelled field or a missing model fails in seconds, not after evolve
and train. Each failure is one line naming the key (stage.section.key)."""
from __future__ import annotations

import re
from contextlib import contextmanager

from common import storage
from common.config import UserError
from common.models import check_model
from common.rows import MISSING_INSTRUCTION
from common.s3 import preflight_s3, redact
from eval.config import ItemsConfig
from eval.testset import quarantine_counts, read_testset, resolve_testset_path, select_items
from evol.preflight import check_seeds
from evol.reading import resolve_seed_path
from generation import GenerationConfig, check_model_available
from pipeline.config import STAGES, PipelineConfig
from pipeline.stages import DONE, RUNNING, foreign_output, marker_path, read_marker, recorded, stage_outputs
from train.data import check_input

JOB = "pipeline"
_KEY = re.compile(r"^[a-z_]+(\.[a-z_0-9]+)*: ")


@contextmanager
def in_stage(stage: str):
    """A stage's own check names its key without the stage (`testset.path: ...`): add it."""
    try:
        yield
    except UserError as exc:
        text = str(exc)
        raise UserError(f"{stage}.{text}" if _KEY.match(text) else f"{stage}: {text}") from None


def preflight(cfg: PipelineConfig) -> None:
    check_outputs(cfg)
    check_upstream(cfg)
    if "evolve" in cfg.stages:
        with in_stage("evolve"):  # before a changed setting empties the stage's folder
            check_seeds(cfg.evolve)
        for role in ("generation", "judge"):
            if getattr(cfg.evolve, role) is not None:
                check_model_reachable(getattr(cfg.evolve, role), f"evolve.{role}")
    if "train" in cfg.stages:
        check_model_reachable(cfg.train.model.name, "train.model.name")
        if "evolve" not in cfg.stages:
            with in_stage("train"):
                check_input(cfg.train.data.path)
    if "evaluate" in cfg.stages:
        check_testset(cfg.evaluate.testset)
        # the candidate is the train stage's export: it exists once that stage has run
        for role in ("baseline", "judge") if "train" in cfg.stages else ("candidate", "baseline", "judge"):
            check_model_reachable(getattr(cfg.evaluate, role), f"evaluate.{role}")


def check_upstream(cfg: PipelineConfig) -> None:
    """The first stage reads the output of the stage before it, which must have finished here if
    this pipeline ran it (an interrupted or stale one would hand on partial or old results)."""
    before = STAGES[:STAGES.index(cfg.stages[0])]
    for stage in before:
        marker = read_marker(cfg, stage)
        state = marker.get("state", DONE) if marker else DONE
        if state != DONE:
            raise UserError(f"stages: {stage} is {state} in {redact(marker_path(cfg, stage))}: its output is "
                            f"{'partial' if state == RUNNING else 'from older inputs'}; add {stage} to stages")


def check_model_reachable(model: GenerationConfig | str, key: str) -> None:
    """The jobs' own model checks (a local folder exists, an API key is set), and an s3:// model
    folder readable and holding a config.json."""
    if isinstance(model, str):
        check_model(model, key)
        name = model
    else:
        check_model_available(model, key)
        name, key = (model.model, f"{key}.model") if model.backend in ("hf", "vllm") else ("", key)
    if name.startswith("s3://"):
        preflight_s3(name, key, write=False)
        if not storage.exists(storage.join(name, "config.json")):
            raise UserError(f"{key}: {redact(name)} holds no config.json (not a model folder)")


def check_testset(testset: ItemsConfig) -> None:
    """Readable, with usable items, and every field the config names present in its rows."""
    path = resolve_testset_path(testset.path)
    preflight_s3(path, "evaluate.testset.path", write=False)
    with in_stage("evaluate"):
        rows = read_testset(path, testset.fields())
    for key in absent_fields(rows, testset):
        raise UserError(f"evaluate.testset.{key}: {getattr(testset, key)!r} is a field of none of the "
                        f"{len(rows)} rows of {testset.path}")
    if not select_items(rows, testset.limit, testset.per_category):
        raise UserError(f"evaluate.testset.path: {testset.path} has no usable items "
                        f"({len(rows)} rows, quarantined: {quarantine_counts(rows) or 'none'})")


def absent_fields(rows: list[dict], testset: ItemsConfig) -> list[str]:
    """The field keys of `testset` that name a field no row has: the instruction field always, the
    optional ones when the config sets them (their defaults are WizardLM's, absent elsewhere)."""
    usable = [row for row in rows if row["error"] is None]
    absent = ["instruction_field"] if rows and all(row["error"] == MISSING_INSTRUCTION for row in rows) else []
    found = {"id_field": lambda r: r["id"] != f"{r['source']}:{r['line']}",
             "category_field": lambda r: r["category"] is not None,
             "difficulty_field": lambda r: r["difficulty"] is not None,
             "reference_field": lambda r: r["reference"] is not None}
    for key, has in found.items():
        if key in testset.model_fields_set and getattr(testset, key) and usable and not any(map(has, usable)):
            absent.append(key)
    return absent


def check_outputs(cfg: PipelineConfig) -> None:
    """Every folder a stage will write is new or this pipeline's (its marker lists it)."""
    check_layout(cfg)
    out = cfg.output.path
    preflight_s3(out, "output.path", write=True)
    if storage.is_nonempty_dir(out) and storage.owner(out) != JOB and not storage.exists(storage.join(out, "stages")):
        raise UserError(f"output.path: {redact(out)} holds files that are not a pipeline's; choose another folder")
    for stage in cfg.stages:
        marker = read_marker(cfg, stage)
        for key, path in stage_outputs(cfg)[stage].items():
            preflight_s3(path, key, write=True)
            taken = storage.is_nonempty_dir(path) or (storage.exists(path) and not storage.is_dir(path))
            if taken and not recorded(marker, path):
                raise UserError(foreign_output(cfg, stage, key, path))


def check_layout(cfg: PipelineConfig) -> None:
    """No stage folder inside another or around the markers, no input inside one: starting a
    stage over empties its folders."""
    folders = {key: path for stage in cfg.stages for key, path in stage_outputs(cfg)[stage].items()}
    for key, path in folders.items():
        for other, folder in folders.items():
            if other != key and _inside(path, folder):
                raise UserError(f"{key}: {redact(path)} is inside {other} ({redact(folder)}); give each stage "
                                "its own folder")
        if _inside(cfg.output.path, path):
            raise UserError(f"output.path: {redact(cfg.output.path)} is inside {key} ({redact(path)}); "
                            "choose another folder")
        for name, given in inputs(cfg).items():
            if _inside(given, path):
                raise UserError(f"{name}: {redact(given)} is inside {key} ({redact(path)}), which a rerun "
                                "empties; move it or choose another output folder")


def inputs(cfg: PipelineConfig) -> dict[str, str]:
    """The inputs that are paths (local ones that exist, s3:// ones), absolute, by config key."""
    given = {"evolve.seeds.path": resolve_seed_path(cfg.evolve.seeds.path),
             "evolve.generation.model": cfg.evolve.generation.model,
             "evolve.judge.model": cfg.evolve.judge.model if cfg.evolve.judge else "",
             "train.model.name": cfg.train.model.name,
             "evaluate.testset.path": resolve_testset_path(cfg.evaluate.testset.path),
             "evaluate.baseline.model": cfg.evaluate.baseline.model,
             "evaluate.judge.model": cfg.evaluate.judge.model}
    return {key: storage.absolute(path) for key, path in given.items()
            if path.startswith("s3://") or (path and storage.exists(path) and "://" not in path)}


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")
