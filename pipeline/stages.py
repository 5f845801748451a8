"""What a rerun does with each stage: skip it, resume it, or run it from scratch.

A marker `output.path/stages/<stage>.json` records the last start of a stage here: the fingerprint
of its settings (and of every upstream stage's), the folders it writes, and its state: `running`
(started, not finished), `done`, or `stale` (an upstream stage ran again since: its outputs were
made from other inputs). Outputs of other settings or other inputs are never resumed: they are
emptied and the stage runs from scratch, so the paths the user was given keep pointing at the
newest results.
"""
from __future__ import annotations

import hashlib
import json
import time

from common import storage
from common.config import UserError
from common.s3 import redact
from eval.cache import UNCACHED_KEYS as EVALUATE_UNCACHED_KEYS
from evol.resume import EXECUTION_KEYS as EVOLVE_EXECUTION_KEYS
from evol.resume import flatten
from pipeline.config import STAGES, PipelineConfig

SKIP, RESUME, FRESH = "skip", "resume", "fresh"
RUNNING, DONE, STALE = "running", "done", "stale"

# Keys that change where or how fast a stage runs, not what it makes: a rerun that changes only
# them skips or resumes the stage (a train worker killed on purpose resumes from its checkpoint).
EXECUTION_KEYS = {"evolve": EVOLVE_EXECUTION_KEYS,
                  "train": ("checkpoint.keep", "checkpoint.max_failures", "checkpoint.scratch_dir",
                            "metrics.", "debug."),
                  "evaluate": tuple(f"{role}.{key}" for role in ("candidate", "baseline", "judge")
                                    for key in EVALUATE_UNCACHED_KEYS)}


def fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    """A stage's settings and those of every stage upstream of it: a changed evolve config makes
    train and evaluate stale too. Left out: the ray section and each stage's EXECUTION_KEYS."""
    result, chain = {}, ""
    for stage in STAGES:
        settings = flatten(getattr(cfg, stage).model_dump(mode="json", exclude={"ray"}))
        settings = {k: v for k, v in settings.items() if not k.startswith(EXECUTION_KEYS[stage])}
        chain = hashlib.sha256((chain + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:16]
        result[stage] = chain
    return result


def decide(marker: dict | None, fingerprint: str, has_result: bool) -> tuple[str, str]:
    """(SKIP | RESUME | FRESH, why) for a stage, from its marker: resumed only when its outputs
    were made with these settings from these inputs."""
    if marker is None:
        return FRESH, "first run"
    if marker.get("fingerprint") != fingerprint:
        return FRESH, "its settings changed"
    state = marker.get("state", DONE)  # markers written before states existed mark finished stages
    if state == STALE:
        return FRESH, "an upstream stage ran again"
    if state == DONE:
        return (SKIP, "complete for these settings") if has_result else (RESUME, "its result is missing")
    return RESUME, "it was interrupted"


def stage_outputs(cfg: PipelineConfig) -> dict[str, dict[str, str]]:
    """The folders each stage writes, by the config key that names them (emptied to start over)."""
    train = cfg.train
    return {"evolve": {"evolve.output.path": storage.absolute(cfg.evolve.output.path)},
            "train": {"train.output.path": storage.absolute(train.output.path),
                      "train.checkpoint.storage_path": storage.join(storage.absolute(train.checkpoint.storage_path),
                                                                    train.name)},
            "evaluate": {"evaluate.output.path": storage.absolute(cfg.evaluate.output.path)}}


def marker_path(cfg: PipelineConfig, stage: str) -> str:
    return storage.join(cfg.output.path, "stages", f"{stage}.json")


def read_marker(cfg: PipelineConfig, stage: str) -> dict | None:
    path = marker_path(cfg, stage)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def write_marker(cfg: PipelineConfig, stage: str, fingerprint: str, state: str, **extra) -> None:
    _write(marker_path(cfg, stage), {
        "stage": stage, "fingerprint": fingerprint, "state": state,
        "outputs": sorted(stage_outputs(cfg)[stage].values()),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} | extra)


def _write(path: str, marker: dict) -> None:
    """Whole or not at all: a kill while a marker is written must not leave half a file."""
    storage.write_bytes_atomic(path, (json.dumps(marker, indent=2) + "\n").encode())


def recorded(marker: dict | None, path: str) -> bool:
    """Whether this pipeline wrote `path` (markers without a list of outputs predate it: they
    record the folders of the settings they name, which are the same paths)."""
    if marker is None:
        return False
    return path in marker.get("outputs", [path])


def mark_later_stale(cfg: PipelineConfig, stage: str) -> None:
    """Before `stage` runs: every later stage's outputs come from the old inputs (even when this
    run stops here or does not run them)."""
    for later in STAGES[STAGES.index(stage) + 1:]:
        marker = read_marker(cfg, later)
        if marker is not None and marker.get("state") != STALE:
            _write(marker_path(cfg, later), marker | {"state": STALE})


def empty_outputs(cfg: PipelineConfig, stage: str, marker: dict | None) -> None:
    """Start over: the stage's folders are emptied, only those this pipeline wrote (preflight
    refused any other non-empty one); the folder itself stays (it may be a mount point; on s3
    pyarrow leaves an empty "folder/" object)."""
    for key, path in stage_outputs(cfg)[stage].items():
        if not storage.is_nonempty_dir(path):
            continue
        if not recorded(marker, path):
            raise UserError(foreign_output(cfg, stage, key, path))
        filesys, inner = storage.filesystem(path)
        filesys.delete_dir_contents(inner)


def foreign_output(cfg: PipelineConfig, stage: str, key: str, path: str) -> str:
    return (f"{key}: {redact(path)} holds files this pipeline has no record of writing (no entry in "
            f"{redact(marker_path(cfg, stage))}); delete them or choose another path")
