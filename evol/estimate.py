"""What an evolve run will cost, before it runs: requests, tokens and money (or accelerator-hours)
from the seeds' token counts, the rounds and the token caps, without calling a model.

A seed's chain is at least 1 + M requests: its answer (when the seed file has none), then per round
a rewrite that the text rules eliminate. At most, per round, a rewrite, the rewrite's answer and the
equality check, plus what the round may start and cancel: the later rounds it starts ahead while its
check runs (evolve.rounds_ahead, each whole, cancelled when the check eliminates the candidate) and
a fallback rewrite (evolve.fallback_rewrites, engines of our own). The token figures are upper
bounds: every request writes its max_tokens and every evolution is kept (so the next round's parent
is a full-length rewrite).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from evol.config import CostConfig, EvolveConfig, EvolveSettings
from evol.operations import OPERATIONS
from generation.config import GenerationConfig

ROLES = ("writer", "judge")


@dataclass(frozen=True)
class Overheads:
    """Tokens a role's prompts add around the instructions, prompt format included."""
    evolve: dict[str, int]  # per operation: its template around the parent
    equality: int  # the equality template around parent and candidate
    turn: int  # the prompt format around a plain user turn (an answer request)


@dataclass
class Traffic:
    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def add(self, prompt: int, generated: int) -> None:
        self.requests += 1
        self.prompt_tokens += prompt
        self.generated_tokens += generated


@dataclass
class Estimate:
    seeds: int = 0  # seeds that will evolve
    quarantined: int = 0  # rows that will not (bad rows, too many tokens)
    min_requests: int = 0
    traffic: dict[str, Traffic] = field(default_factory=lambda: {role: Traffic() for role in ROLES})


def estimate_chains(seeds: list[tuple[int, bool]], writer: Overheads, judge: Overheads,
                    settings: EvolveSettings, fallbacks: bool = True) -> Estimate:
    """`seeds`: (tokens of the user turn, needs a generated answer) of each usable seed; `fallbacks`:
    the writer starts fallback rewrites when evolve.fallback_rewrites is on (an engine of our own,
    never a paid endpoint)."""
    est = Estimate(seeds=len(seeds))
    rewrite, answer = settings.evolve_sampling.max_tokens, settings.respond_sampling.max_tokens
    verdict = settings.judge_sampling.max_tokens
    template = max(writer.evolve[op] for op in settings.operations)
    for tokens, needs_answer in seeds:
        if needs_answer:
            est.traffic["writer"].add(writer.turn + tokens, answer)
        est.min_requests += needs_answer + settings.rounds
        parent = tokens
        for index in range(1, settings.rounds + 1):
            ahead = min(settings.rounds_ahead, settings.rounds - index)
            for evolving in [parent] + [max(parent, rewrite)] * ahead:  # the round, then those started ahead
                est.traffic["writer"].add(template + evolving, rewrite)
                est.traffic["writer"].add(writer.turn + rewrite, answer)
                est.traffic["judge"].add(judge.equality + evolving + rewrite, verdict)
            if fallbacks and settings.fallback_rewrites and index < settings.rounds:
                est.traffic["writer"].add(template + parent, rewrite)
            parent = max(parent, rewrite)
    return est


def price(traffic: Traffic, gen: GenerationConfig, cost: CostConfig) -> dict:
    """Money of one role's traffic: token prices for an API endpoint; for an engine of our own,
    accelerator-hours at cost.engine_tokens_per_second, priced per accelerator-hour. None: unknown."""
    if gen.backend == "openai":
        prices = (cost.price_per_million_input_tokens, cost.price_per_million_output_tokens)
        money = (None if prices == (None, None) else
                 (traffic.prompt_tokens * (prices[0] or 0) + traffic.generated_tokens * (prices[1] or 0)) / 1e6)
        return {"accelerator_hours": None, "money": money}
    from evol.summary import accelerators_per_engine

    hours = (None if cost.engine_tokens_per_second is None else
             traffic.generated_tokens / cost.engine_tokens_per_second / 3600 * accelerators_per_engine(gen))
    money = None if hours is None or cost.price_per_accelerator_hour is None else hours * cost.price_per_accelerator_hour
    return {"accelerator_hours": hours, "money": money}


def estimate_summary(est: Estimate, cfg: EvolveConfig) -> dict:
    """The estimate as the job prints and returns it: per role its traffic and price, and totals."""
    gens = {"writer": cfg.generation, "judge": cfg.judge or cfg.generation}
    roles = {role: {"backend": gens[role].backend, "model": gens[role].model, **vars(est.traffic[role]),
                    **price(est.traffic[role], gens[role], cfg.cost)} for role in ROLES}
    known = [r["money"] for r in roles.values() if r["money"] is not None]
    return {"seeds": est.seeds, "quarantined": est.quarantined, "rounds": cfg.evolve.rounds,
            "requests": {"min": est.min_requests, "max": sum(r["requests"] for r in roles.values())},
            "prompt_tokens": sum(r["prompt_tokens"] for r in roles.values()),
            "generated_tokens": sum(r["generated_tokens"] for r in roles.values()),
            "money": sum(known) if known else None,
            "money_complete": len(known) == len(roles), "roles": roles}


def format_estimate(summary: dict) -> str:
    lines = [f"estimate (no model called): {summary['seeds']} seeds evolve ({summary['quarantined']} quarantined), "
             f"{summary['rounds']} rounds",
             f"requests: {summary['requests']['min']:,} to {summary['requests']['max']:,} (every evolution "
             "eliminated by its text checks .. every one answered and checked, with the rounds started ahead "
             "and the fallback rewrites it may cancel)",
             f"tokens, at most (every request writes its max_tokens): {summary['prompt_tokens']:,} prompt + "
             f"{summary['generated_tokens']:,} generated"]
    for role, r in summary["roles"].items():
        hours = "" if r["accelerator_hours"] is None else f", {r['accelerator_hours']:.3f} accelerator-hours"
        money = "" if r["money"] is None else f", money {r['money']:.4f}"
        lines.append(f"  {role} ({r['backend']} {r['model']}): {r['requests']:,} requests, {r['prompt_tokens']:,} "
                     f"prompt + {r['generated_tokens']:,} generated tokens{hours}{money}")
    if summary["money"] is None:
        lines.append("money: no price set (cost.price_per_million_*_tokens for an endpoint; "
                     "cost.engine_tokens_per_second and cost.price_per_accelerator_hour for your engines)")
    else:
        partial = "" if summary["money_complete"] else " (a role without a price is left out)"
        lines.append(f"money, at most: {summary['money']:.4f}{partial}")
    return "\n".join(lines)


# The job's side: seeds read and counted on the driver with each role's tokenizer (none loads weights).

def role_tokenizer(gen: GenerationConfig):
    """The tokenizer a role counts with, or None (then characters / 4, as the openai backend does)."""
    from evol.preflight import driver_tokenizer

    if gen.backend in ("hf", "vllm"):
        return driver_tokenizer(gen)
    if gen.backend == "openai" and gen.openai.tokenizer:
        from transformers import AutoTokenizer

        from common.models import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(gen.openai.tokenizer))
    return None


def counter(tokenizer):
    from generation.openai_api import CHARS_PER_TOKEN
    from generation.prompts import text_token_ids

    if tokenizer is None:
        return lambda texts: [-(-len(text) // CHARS_PER_TOKEN) for text in texts]
    return lambda texts: [len(ids) for ids in text_token_ids(tokenizer, texts)]


def role_overheads(gen: GenerationConfig, tokenizer) -> Overheads:
    """Template tokens as this role sends them: the chat template included where the backend applies
    it here (hf, vllm); an endpoint's own chat wrapping is not known before it answers."""
    from evol.preflight import template_tokens
    from evol.templates import template_overheads
    from generation.prompts import prompt_token_ids

    counts = template_tokens(gen, tokenizer) or counter(tokenizer)(template_overheads())
    turn = len(prompt_token_ids("", gen.prompt_format, tokenizer)) if template_tokens(gen, tokenizer) else 0
    return Overheads(evolve=dict(zip(OPERATIONS, counts[:-1])), equality=counts[-1], turn=turn)


def seed_tokens(cfg: EvolveConfig, count) -> tuple[list[tuple[int, bool]], int]:
    """(tokens of the user turn, needs a generated answer) of every seed that will evolve, in the
    job's order and up to seeds.limit, and the number of rows that will be quarantined instead."""
    from evol.reading import file_rows, resolve_seed_path, seed_files
    from evol.seeds import mark_duplicates, source_name
    from evol.templates import user_turn

    s = cfg.seeds
    root, fields = resolve_seed_path(s.path), s.fields()
    seeds, quarantined, left = [], 0, s.limit
    for path in seed_files(root):
        for rows in file_rows(path, source_name(path, root), fields, s.piece_bytes):
            rows = mark_duplicates(rows)[:left]
            good = [row for row in rows if row["error"] is None]
            tokens = count([user_turn(row["instruction"], row["input"]) for row in good])
            fits = [(n, not row["response"]) for row, n in zip(good, tokens) if n <= s.max_instruction_tokens]
            seeds += fits
            quarantined += len(rows) - len(fits)
            left = None if left is None else left - len(rows)
            if left == 0:
                return seeds, quarantined
    return seeds, quarantined


def estimate_evolve(cfg: EvolveConfig) -> dict:
    """`python -m jobs.evolve --config ... --estimate`: checks the seeds, counts, prints, returns."""
    from evol.preflight import check_seeds

    check_seeds(cfg)
    writer_tok = role_tokenizer(cfg.generation)
    judge_tok = writer_tok if cfg.judge is None else role_tokenizer(cfg.judge)
    seeds, quarantined = seed_tokens(cfg, counter(writer_tok))
    est = estimate_chains(seeds, role_overheads(cfg.generation, writer_tok),
                          role_overheads(cfg.judge or cfg.generation, judge_tok), cfg.evolve,
                          fallbacks=cfg.generation.backend != "openai")
    est.quarantined = quarantined
    summary = estimate_summary(est, cfg)
    print(format_estimate(summary))
    return summary
