"""Shared pieces of the generation benchmarks: seeds, the job's own chains, and the exact prompts
those chains sent, rebuilt from their records so a bare engine can be given the same work."""
from __future__ import annotations

import time
from importlib import resources

from evol.config import EvolveSettings
from evol.elimination import SKIPPED, TRUNCATED_EVOLUTION
from evol.rounds import Roles, evolve_rows
from evol.seeds import SeedFields, parse_seed_file
from evol.templates import equality_prompt, evolve_prompt, user_turn
from generation.config import SamplingConfig
from generation.types import SamplingParams

FIELDS = SeedFields("instruction", "input", None, "id")  # every seed is answered: round 0 works too


def bundled_seed_rows(count: int) -> list[dict]:
    data = (resources.files("evol") / "data" / "self_instruct_seeds.jsonl").read_bytes()
    return parse_seed_file(data, "self_instruct_seeds.jsonl", FIELDS)[:count]


def settings(rounds: int, evolve_tokens: int, respond_tokens: int) -> EvolveSettings:
    return EvolveSettings(rounds=rounds,
                          evolve_sampling=SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=evolve_tokens),
                          respond_sampling=SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=respond_tokens),
                          judge_sampling=SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16))


async def job_chains(generator, rows: list[dict], cfg: EvolveSettings) -> tuple[list[dict], float]:
    """The evolve job's code path inside one actor: every chain at once, the engine batching.
    Awaited in the caller's event loop: an async engine lives in one loop for its whole life."""
    start = time.perf_counter()
    records = await evolve_rows(rows, Roles(generator, generator), cfg, max_instruction_tokens=4096)
    return records, time.perf_counter() - start


def one_actor(threads: int) -> dict[str, str]:
    """A generation section's keys for one actor whose one engine has `threads` torch threads."""
    return {"concurrency": "[1,1]", "num_cpus": "1", "torch_threads": str(threads)}


def engine_shape(backend: str, threads: int | None) -> list[str]:
    """Job overrides on configs/local.yaml for its engines. vLLM is one engine over the machine's cores;
    hf runs the preset's pool (one 1-thread actor per core) unless `threads` asks for one actor of that
    many threads, the shape of the figures measured before the preset's one engine per core."""
    if backend == "vllm" or threads:
        return [f"generation.{key}={value}" for key, value in one_actor(threads or 2).items()]
    return []


def split_by_chain(records: list[dict], parts: int) -> list[list[dict]]:
    """The records in `parts` shares of whole chains with about equal generated tokens (the longest
    chains first, each to the share with the fewest so far): the bare engines' best static split."""
    chains: dict[str, list[dict]] = {}
    for r in records:
        chains.setdefault(r["root_id"], []).append(r)
    weighed = [(sum(r["generated_tokens"] or 0 for r in chain), chain) for chain in chains.values()]
    shares: list[list[dict]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for tokens, chain in sorted(weighed, key=lambda tc: -tc[0]):
        least = loads.index(min(loads))
        shares[least] += chain
        loads[least] += tokens
    return shares


def prompts_of(records: list[dict], cfg: EvolveSettings) -> list[tuple[str, SamplingConfig]]:
    """Every (prompt, sampling) the chains sent, in no particular order."""
    text_of = {r["id"]: user_turn(r["instruction"], r["input"]) if r["round"] == 0 else r["instruction"]
               for r in records}
    prompts = []
    for r in records:
        if r["round"] == 0:
            if r["requests"]:
                prompts.append((text_of[r["id"]], cfg.respond_sampling))
            continue
        parent = text_of[r["parent_id"]]
        prompts.append((evolve_prompt(r["op"], parent), cfg.evolve_sampling))
        if r["response"] is not None:
            prompts.append((r["instruction"], cfg.respond_sampling))
        if r["equality"] != SKIPPED:
            prompts.append((equality_prompt(parent, r["instruction"]), cfg.judge_sampling))
    return prompts


def longest_sequence(records: list[dict], evolve_max_tokens: int, fallbacks: bool = False) -> tuple[str, int]:
    """(root_id, tokens) of the chain with the most tokens that must decode one after another: its
    rewrites (each rewrites the text before it) and its last round's answer. Rounds ahead overlap the
    rest of its work with these. A rewrite counts its cleaned text's tokens, or the whole limit where it
    was cut at it. With `fallbacks` (evolve.fallback_rewrites, the engine never short of rows), rounds that
    evolve the same parent again overlap as run_chain overlaps them (`same_parent_path`)."""
    rounds: dict[str, list[dict]] = {}
    for r in records:
        if r["round"] > 0:
            rounds.setdefault(r["root_id"], []).append(r)
    sequence: dict[str, int] = {}
    for root, chain in rounds.items():
        chain.sort(key=lambda r: r["round"])
        runs: list[list[int]] = []  # rewrites of one parent, one after the other
        for i, r in enumerate(chain):
            rewrite = evolve_max_tokens if r["reason"] == TRUNCATED_EVOLUTION else (r["instruction_tokens"] or 0)
            if i and fallbacks and r["parent_id"] == chain[i - 1]["parent_id"]:
                runs[-1].append(rewrite)
            else:
                runs.append([rewrite])
        sequence[root] = sum(same_parent_path(run) for run in runs) + (chain[-1]["response_tokens"] or 0)
    return max(sequence.items(), key=lambda item: item[1], default=("", 0))


def same_parent_path(lengths: list[int]) -> int:
    """Decode steps for rewrites of one parent, each round after an eliminated one, with fallback rewrites:
    round j+1 starts when round j becomes the chain's oldest round (its fallback), and round j+1 becomes
    the oldest when round j's verdict is in (its rewrite done)."""
    start, oldest = [0], [0]
    for j in range(1, len(lengths)):
        start.append(oldest[j - 1])
        oldest.append(max(oldest[j - 1], start[j - 1] + lengths[j - 1]))
    return max(oldest[-1], start[-1] + lengths[-1])


def generated_tokens(records: list[dict]) -> int:
    return sum(r["generated_tokens"] or 0 for r in records)


def by_sampling(prompts: list[tuple[str, SamplingConfig]]) -> dict[SamplingParams, list[str]]:
    groups: dict[SamplingParams, list[str]] = {}
    for prompt, sampling in prompts:
        groups.setdefault(SamplingParams.from_config(sampling), []).append(prompt)
    return groups
