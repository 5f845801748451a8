"""The evolve job's checks before Ray and before any model: seeds, models, prompt budget, output folder.

Each one fails in a second with a UserError that names the config key, not after a model load.
"""
from __future__ import annotations

import os

import yaml

from common import storage
from common.config import UserError
from common.models import SMALL_MODEL_ALIAS, pin_local_model
from common.s3 import preflight_s3
from common.tokenizer import tokenizer_path
from evol.config import TRUNCATING_BACKENDS, EvolveConfig, actor_resources, prompt_budget_problem
from evol.identity import run_identity
from evol.output import JOB
from evol.reading import file_rows, resolve_seed_path, seed_files
from evol.resume import INPUTS, config_changes
from evol.seeds import MISSING_INSTRUCTION, SUPPORTED_SUFFIXES, source_name
from evol.templates import template_overheads
from generation import GenerationConfig, check_model_available
from generation.prompts import prompt_token_ids


def check_seeds(cfg: EvolveConfig) -> str:
    seeds = resolve_seed_path(cfg.seeds.path)
    preflight_s3(seeds, "seeds.path", write=False)
    if not storage.exists(seeds):
        raise UserError(f"seeds.path: {cfg.seeds.path} does not exist")
    if storage.is_dir(seeds):
        files = storage.list_files(seeds)
        ignored = [f for f in files if not f.lower().endswith(SUPPORTED_SUFFIXES)]
        if len(ignored) == len(files):
            raise UserError(f"seeds.path: {cfg.seeds.path} holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
        if ignored:
            print(f"warning: seeds.path: ignoring {len(ignored)} file(s) that are not "
                  f"{'/'.join(SUPPORTED_SUFFIXES)}: {', '.join(os.path.basename(f) for f in ignored[:5])}")
    elif not seeds.lower().endswith(SUPPORTED_SUFFIXES):
        raise UserError(f"seeds.path: {cfg.seeds.path} is not one of {', '.join(SUPPORTED_SUFFIXES)}")
    check_first_rows(cfg, seeds)
    return seeds


FIRST_PIECE_BYTES = 1 << 20


def check_first_rows(cfg: EvolveConfig, seeds: str) -> None:
    """The first rows of the seeds, read before Ray: files with no row at all (Ray Data's shuffle then
    printed a page of traceback before the job's own error), or a seeds.instruction_field that none of
    them has (every seed quarantined, and the job ended with exit 0 and no training set)."""
    fields = cfg.seeds.fields()
    for path in seed_files(seeds):
        rows = next(iter(file_rows(path, source_name(path, seeds), fields, FIRST_PIECE_BYTES)), [])
        if not rows:
            continue
        if all(row["error"] == MISSING_INSTRUCTION for row in rows):
            raise UserError(f"seeds.instruction_field: {cfg.seeds.instruction_field!r} is a field of none of the first "
                            f"{len(rows)} rows of {path}; set seeds.instruction_field to the field that holds "
                            "the instruction")
        return
    raise UserError(f"seeds.path: {cfg.seeds.path} holds no seed rows")

def check_output(cfg: EvolveConfig, identity: dict) -> None:
    """A new folder, the same run again (resume), or overwrite of a folder this job made.
    `identity`: the run as evol.identity.run_identity gives it, compared with the saved one."""
    out = cfg.output.path
    preflight_s3(out, "output.path", write=True)
    if storage.is_nonempty_dir(out):
        if cfg.output.overwrite:
            storage.delete_owned_dir(out, JOB)
        elif storage.owner(out) != JOB or not storage.exists(storage.join(out, "config.yaml")):
            raise UserError(f"output.path: {out} already holds results that are not an evolve run; "
                            "choose another path")
        else:
            saved = yaml.safe_load(storage.read_text(storage.join(out, "config.yaml")))
            changes = config_changes(saved, identity)
            inputs = [_input_name(key) for key in changes if key.startswith(INPUTS + ".")]
            if inputs:
                raise UserError(f"output.path: {out} holds a run made from other inputs (changed since: "
                                f"{', '.join(inputs)}); choose another output.path, or set output.overwrite=true "
                                "to start over")
            if changes:
                raise UserError(f"output.path: {out} holds a run with another config (changed: {', '.join(changes)}); "
                                "rerun with its config to resume it, or set output.overwrite=true to start over")
    storage.check_writable(out)

def _input_name(key: str) -> str:
    """`inputs.seeds.a.jsonl` -> `seeds file a.jsonl`; `inputs.generation.x` -> `generation.model file x`."""
    _, role, name = key.split(".", 2)
    return f"seeds file {name}" if role == "seeds" else f"{role}.model file {name}"

def check_apart(cfg: EvolveConfig, seeds: str) -> None:
    """Neither folder inside the other: a rerun would read the output's jsonl files as seeds, or
    an overwrite would delete the seeds."""
    seeds_path, out = storage.absolute(seeds).rstrip("/"), storage.absolute(cfg.output.path).rstrip("/")
    if seeds_path.startswith(out + "/"):
        raise UserError(f"output.path: {cfg.output.path} contains the seeds; choose another output folder")
    if storage.is_dir(seeds) and (out + "/").startswith(seeds_path + "/"):
        raise UserError(f"output.path: {cfg.output.path} is inside the seeds folder {cfg.seeds.path} (a rerun would "
                        "read its files as seeds); choose an output folder outside it")

def preflight(cfg: EvolveConfig) -> dict:
    """Every check that needs no Ray and no model: fail in a second, not after a model load. Returns
    the run's identity (config and input fingerprints) to save in the run folder."""
    seeds = check_seeds(cfg)
    check_model_available(cfg.generation, "generation")
    if cfg.judge is not None:
        check_model_available(cfg.judge, "judge")
    check_prompt_budget(cfg)
    check_apart(cfg, seeds)
    identity = run_identity(cfg)
    check_output(cfg, identity)
    return identity

def check_room(ray, cfg: EvolveConfig) -> None:
    """On a fixed-size Ray (no autoscaler), a pool that holds every CPU starves the light read and
    shuffle tasks and the job hangs without a word: refuse it with the numbers instead."""
    if os.environ.get("RAY_ADDRESS") or cfg.ray.address:
        return  # a cluster may add nodes
    gen, total = cfg.generation, ray.cluster_resources()
    cpus, gpus = actor_resources(cfg)
    need_cpus, need_gpus = gen.concurrency[1] * cpus, gen.concurrency[1] * gpus
    if need_cpus > total.get("CPU", 0) - 0.5:
        raise UserError(f"generation.concurrency: {gen.concurrency[1]} actors x num_cpus {cpus:g} = "
                        f"{need_cpus:g} CPUs leave no room for reading seeds on this {total.get('CPU', 0):g}-CPU Ray; "
                        "lower generation.num_cpus (e.g. 0.5) or the pool size")
    if need_gpus > total.get("GPU", 0):
        raise UserError(f"generation.concurrency: {gen.concurrency[1]} actors x num_gpus {gpus:g} need "
                        f"{need_gpus:g} GPUs; this Ray has {total.get('GPU', 0):g}")

def driver_tokenizer(gen: GenerationConfig):
    """The tokenizer of a backend that cuts prompts itself, read on the driver without the weights
    (an s3 folder's tokenizer files only; a hub id's from the hub), or None where it cannot be
    read here (a hub the driver cannot reach): the actors then check with their own."""
    if gen.backend not in TRUNCATING_BACKENDS:
        return None
    from transformers import AutoTokenizer

    local = gen.model == SMALL_MODEL_ALIAS or os.path.isdir(os.path.expanduser(gen.model))
    try:
        return AutoTokenizer.from_pretrained(tokenizer_path(pin_local_model(gen.model)))
    except OSError:
        if local:
            raise
        return None

def template_tokens(gen: GenerationConfig, tokenizer) -> list[int] | None:
    """Token counts of templates.template_overheads() as this backend sends them (chat template
    included), or None without a tokenizer."""
    if tokenizer is None or gen.backend not in TRUNCATING_BACKENDS:
        return None
    return [len(prompt_token_ids(text, gen.prompt_format, tokenizer)) for text in template_overheads()]

def check_prompt_budget(cfg: EvolveConfig, writer=None, judge=None) -> None:
    """The config's check that the longest instruction plus the longest template fits
    max_prompt_tokens, again with the writer's (and judge's) tokenizer instead of words: the
    driver's (`driver_tokenizer`) before any work, an actor's own engines' as it starts."""
    if writer is None:
        writer = driver_tokenizer(cfg.generation)
    if judge is None:
        judge = writer if cfg.judge is None else driver_tokenizer(cfg.judge)
    writer_counts = template_tokens(cfg.generation, writer)
    judge_counts = template_tokens(cfg.judge or cfg.generation, judge)
    if writer_counts is None and judge_counts is None:
        return
    words = [len(text.split()) for text in template_overheads()]
    problem = prompt_budget_problem(cfg, (writer_counts or words)[:-1] + [(judge_counts or words)[-1]], "tokens")
    if problem:
        raise UserError(f"config error: {problem}")
