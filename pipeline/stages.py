"""What a rerun does with each stage: skip it, resume it, or run it from scratch.

A marker `output.path/stages/<stage>.json` records the last start of a stage here: the fingerprint
of its settings (and of every upstream stage's), the fingerprints of the files it reads that no stage
makes (seed files, model folders, the test set: an edit under the same path changes no setting), the
folders it writes, whether it stopped at its budget (evolve's `cost`), and its state: `running`
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
from eval.testset import resolve_testset_path, testset_files
from evol.identity import file_fingerprint, model_fingerprint, model_folder_fingerprint, run_identity
from evol.resume import EXECUTION_KEYS as EVOLVE_EXECUTION_KEYS
from evol.resume import INPUTS, flatten
from evol.seeds import source_name
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


def stage_inputs(cfg: PipelineConfig, stage: str) -> dict:
    """Fingerprints of what a stage reads that no stage before it makes, taken as the evolve job takes
    its own (evol/identity.py). The candidate is the train stage's export: the chain of settings covers it."""
    if stage == "evolve":
        return run_identity(cfg.evolve)[INPUTS]
    if stage == "train":
        return {"model": model_folder_fingerprint(cfg.train.model.name)}
    root = resolve_testset_path(cfg.evaluate.testset.path)
    return {"testset": {source_name(f, root): file_fingerprint(f) for f in testset_files(root)},
            **{role: model_fingerprint(getattr(cfg.evaluate, role)) for role in ("baseline", "judge")}}


def changed_inputs(before: dict | None, now: dict | None) -> list[str]:
    """What changed between two stage_inputs, as `section: file, ...`; nothing for a marker written
    before inputs were recorded."""
    if before is None or now is None:
        return []
    changed = []
    for section in sorted(set(before) | set(now)):
        old, new = before.get(section), now.get(section)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            files = sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
            changed.append(f"{section}: {', '.join(files[:3])}" + (f" and {len(files) - 3} more" if len(files) > 3 else ""))
        else:
            changed.append(section)
    return changed


def decide(marker: dict | None, fingerprint: str, has_result: bool, inputs: dict | None = None,
           budget: dict | None = None) -> tuple[str, str]:
    """(SKIP | RESUME | FRESH, why) for a stage, from its marker: resumed only when its outputs
    were made with these settings from these inputs (`stage_inputs`); a finished stage that stopped
    at its budget resumes once the budget (`budget`: evolve's cost section) is another."""
    if marker is None:
        return FRESH, "first run"
    if marker.get("fingerprint") != fingerprint:
        return FRESH, "its settings changed"
    changed = changed_inputs(marker.get("inputs"), inputs)
    if changed:
        return FRESH, f"its inputs changed ({'; '.join(changed)})"
    state = marker.get("state", DONE)  # markers written before states existed mark finished stages
    if state == STALE:
        return FRESH, "an upstream stage ran again"
    if state == DONE:
        if not has_result:
            return RESUME, "its result is missing"
        stopped = marker.get("stopped_at_budget")
        if stopped is None:
            return SKIP, "complete for these settings"
        if budget is not None and budget != stopped:
            return RESUME, "it stopped at its budget, which changed since"
        return SKIP, "stopped at its budget, which is unchanged (raise evolve.cost.* to evolve the rest)"
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
