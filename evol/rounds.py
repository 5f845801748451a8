"""The Evol-Instruct chain of one seed, as one coroutine, with the models injected.

A seed row gives one round-0 record (kept, quarantined, or error); then each round gives one
candidate (kept, eliminated with the rule, or error). A failed candidate's parent goes back
to the pool unchanged and evolves again next round. Seeds never wait for each other: every
chain awaits its own requests and the engine batches whatever is in flight. Pure apart from
the generators, so it is tested without Ray.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from evol import elimination as rules
from evol.config import EvolveSettings
from evol.operations import choose_operation, stable_hash
from evol.records import (ELIMINATED, ERROR, KEPT, QUARANTINED, SEED_OP, SURVIVED, candidate_id,
                          empty_record)
from evol.seeds import TOO_MANY_TOKENS
from evol.templates import equality_prompt, evolve_prompt, user_turn
from generation.choice import LOGPROBS, TEXT
from generation.config import SamplingConfig
from generation.types import (
    Choice,
    EngineDown,
    Generation,
    GenerationError,
    Generator,
    SamplingParams,
    clean_text,
)

INTERNAL_ERROR = "internal_error"
WORKER_FAILED = "worker_failed"


class EqualityLean:
    """The judge's lean toward Equal (log P(Equal) - log P(Not Equal)) on content-free pairs, asked
    once and shared by every chain of the actor: contextual calibration (Zhao et al., "Calibrate
    Before Use", 2021) for a judge too small to read the pair, whose raw verdict is Equal for anything."""
    CONTENT_FREE = (("N/A", "N/A"), ("", ""), ("[MASK]", "[MASK]"))

    def __init__(self):
        self._lean: asyncio.Task | None = None

    async def of(self, judge: Generator, sampling: SamplingConfig) -> float:
        if self._lean is None:
            self._lean = asyncio.ensure_future(self._measure(judge, sampling))
        try:
            return await asyncio.shield(self._lean)
        except Exception:
            self._lean = None  # a failed request: the next check asks again
            raise

    @staticmethod
    async def _measure(judge: Generator, sampling: SamplingConfig) -> float:
        choices = await asyncio.gather(*(judge.choose(equality_prompt(a, b), list(rules.EQUALITY_OPTIONS),
                                                      SamplingParams.from_config(sampling, 0))
                                         for a, b in EqualityLean.CONTENT_FREE))
        return sum(signed_margin(c) for c in choices) / len(choices)


def signed_margin(choice: Choice) -> float:
    """log P(Equal) - log P(Not Equal) of a two-option choice with a margin."""
    return choice.margin if choice.option == rules.EQUALITY_OPTIONS[0] else -choice.margin


def calibrated(choice: Choice, lean: float) -> Choice:
    """The verdict once the judge's lean is taken off its margin (Equal only when the pair reads as more
    equal than a content-free one); the margin kept is the corrected one."""
    corrected = signed_margin(choice) - lean
    option = rules.EQUALITY_OPTIONS[0] if corrected > 0 else rules.EQUALITY_OPTIONS[1]
    return replace(choice, option=option, margin=abs(corrected), text=option)


@dataclass
class Cost:
    """What the model spent on one record, summed over its requests."""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    requests: int = 0
    seconds: float = 0.0

    def columns(self) -> dict:
        return dict(prompt_tokens=self.prompt_tokens, generated_tokens=self.generated_tokens,
                    requests=self.requests, gen_seconds=round(self.seconds, 6))

    def add(self, other: Cost) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens
        self.requests += other.requests
        self.seconds += other.seconds


@dataclass
class Fallbacks:
    """evolve.fallback_rewrites, for the gauges: rewrites started in case a candidate is eliminated, and
    those the chain then took up."""
    started: int = 0
    taken: int = 0


@dataclass(frozen=True)
class Roles:
    """Who answers what: `writer` evolves and responds, `judge` runs the equality check."""
    writer: Generator
    judge: Generator
    lean: EqualityLean = field(default_factory=EqualityLean)  # for evolve.equality_calibration=content_free
    unused: Cost = field(default_factory=Cost)  # rounds started ahead and cancelled, for the gauges
    fallbacks: Fallbacks = field(default_factory=Fallbacks)


@dataclass(frozen=True)
class PoolItem:
    id: str
    root_id: str
    text: str  # the full user turn (instruction + context) that the next round evolves


@dataclass
class Step:
    """One record in the making: the requests it made and what the caller fills in."""
    cost: Cost = field(default_factory=Cost)

    async def ask(self, generator: Generator, prompt: str, sampling: SamplingConfig, seed: int) -> Generation:
        self.cost.requests += 1
        gen = await generator.generate(prompt, SamplingParams.from_config(sampling, seed))
        gen = replace(gen, text=clean_text(gen.text))
        self.cost.prompt_tokens += gen.prompt_tokens
        self.cost.generated_tokens += gen.completion_tokens
        self.cost.seconds += gen.engine_seconds
        return gen


    async def choose(self, generator: Generator, prompt: str, options: tuple[str, ...],
                     sampling: SamplingConfig, seed: int) -> Choice:
        self.cost.requests += 1
        choice = await generator.choose(prompt, list(options), SamplingParams.from_config(sampling, seed))
        choice = replace(choice, text=clean_text(choice.text)) if choice.text is not None else choice
        self.cost.prompt_tokens += choice.prompt_tokens
        self.cost.generated_tokens += choice.completion_tokens
        self.cost.seconds += choice.engine_seconds
        return choice


def request_seed(settings: EvolveSettings, record_id: str, kind: str) -> int:
    """The sampling seed of one request (kind: respond, evolve or judge), from the run's seed and the
    record it makes: a redone chain asks with the same seeds, so an engine that honours them
    (vLLM, an OpenAI endpoint) draws the same samples."""
    return stable_hash(settings.seed, record_id, kind) & 0x7FFFFFFF


def with_cost(record: dict, cost: Cost) -> dict:
    """`record` with the cost of work asked ahead of its verdict and then not used added."""
    spent = {name: (record[name] or 0) + value for name, value in cost.columns().items()}
    spent["gen_seconds"] = round(spent["gen_seconds"], 6)
    return dict(record, **spent)


def presume(presumed: asyncio.Future, item: PoolItem | None) -> None:
    """Tell the chain what the next round will evolve, as far as is known yet (after the text rules: the
    candidate if they pass it; after the equality check: the candidate or its parent; None: the chain ends
    here); said once per future."""
    if not presumed.done():
        presumed.set_result(item)


async def check_equality(step: Step, roles: Roles, parent: str, candidate: str, settings: EvolveSettings,
                         seed: int) -> dict:
    """Rule 1's record columns: a constrained answer where the judge offers one (generation/choice.py),
    calibrated where evolve.equality_calibration says so, else (or with evolve.equality_check=text)
    the strict parse of its free text."""
    prompt, judge = equality_prompt(parent, candidate), roles.judge
    if settings.equality_check == "constrained" and hasattr(judge, "choose"):
        choice = await step.choose(judge, prompt, rules.EQUALITY_OPTIONS, settings.judge_sampling, seed)
        if settings.equality_calibration == "content_free" and choice.method == LOGPROBS and choice.margin is not None:
            choice = calibrated(choice, await roles.lean.of(judge, settings.judge_sampling))
    else:
        gen = await step.ask(judge, prompt, settings.judge_sampling, seed)
        choice = Choice(None, TEXT, None, gen.text, gen.prompt_tokens, gen.completion_tokens, gen.finished)
    return dict(equality=rules.equality_verdict(choice.option, choice.text, choice.finished),
                equality_method=choice.method, equality_margin=choice.margin, equality_answer=choice.text)


def error_columns(exc: Exception) -> dict:
    """A failed request (GenerationError) or a bug in a chain: recorded, the other chains go on."""
    if isinstance(exc, GenerationError):
        return dict(status=ERROR, reason=exc.reason, detail=exc.detail or None)
    return dict(status=ERROR, reason=INTERNAL_ERROR, detail=f"{type(exc).__name__}: {exc}"[:500])


def quarantine_id(row: dict) -> str:
    return f"quarantined:{row['source']}:{row['line']}"


def quarantine_record(row: dict) -> dict:
    """A bad seed row is a lineage of its own: a duplicate must not join the winning seed's."""
    record_id = quarantine_id(row)
    return empty_record(
        id=record_id, root_id=record_id, round=0, op=SEED_OP,
        instruction=row["instruction"], input=row["input"], status=QUARANTINED, reason=row["error"],
        detail=row["detail"], source=row["source"], line=row["line"], raw=row["raw"])


def worker_failed_chain(row: dict, earlier: list[dict] = (), settings: EvolveSettings | None = None) -> list[dict]:
    """A chain whose worker died on every try: its finished rounds (from `earlier`), then an error record
    (a bad seed is quarantined as usual), so that no row is lost and a rerun retries it."""
    failed = dict(status=ERROR, reason=WORKER_FAILED, detail="the worker evolving this bucket died repeatedly")
    if row["error"] is not None:
        return [quarantine_record(row)]
    done = finished_part(earlier)
    if not done:
        return [empty_record(id=row["seed_id"], root_id=row["seed_id"], round=0, op=SEED_OP,
                             instruction=row["instruction"], input=row["input"], source=row["source"],
                             line=row["line"], **failed)]
    item, round_index = pool_item(done), len(done)
    op = choose_operation(settings.seed, item.id, round_index, settings.operations)
    return done + [empty_record(id=candidate_id(item.id, round_index, op), root_id=item.root_id, parent_id=item.id,
                                round=round_index, op=op, **failed)]


@dataclass
class Candidate:
    """One round's outcome: its record and what the next round evolves (None: the chain ends)."""
    record: dict
    next_item: PoolItem | None


async def start_chain(row: dict, roles: Roles, settings: EvolveSettings, max_instruction_tokens: int,
                      step: Step, presumed: asyncio.Future) -> Candidate:
    """Round 0: quarantine a bad seed, answer a seed that came without a response.

    A generated answer that fails rule 2 or 3 is recorded in `response_reason` and stays out
    of the training set; the seed's instruction still evolves, so the next round may start before
    the answer is back. Answers from the seed file are the user's own and are not judged."""
    try:
        if row["error"] is None:
            text = user_turn(row["instruction"], row["input"])
            length = roles.writer.count_tokens([text])[0]
            if length > max_instruction_tokens:
                row = dict(row, error=TOO_MANY_TOKENS, detail=f"{length} tokens > limit {max_instruction_tokens}")
        if row["error"] is not None:
            return Candidate(quarantine_record(row), None)
        item = PoolItem(row["seed_id"], row["seed_id"], text)
        presume(presumed, item)
        seed = dict(id=row["seed_id"], root_id=row["seed_id"], round=0, op=SEED_OP, instruction=row["instruction"],
                    input=row["input"], instruction_tokens=length, source=row["source"], line=row["line"])
        if row["response"]:
            return Candidate(empty_record(**seed, response=row["response"], status=KEPT,
                                          response_tokens=roles.writer.count_tokens([row["response"]])[0],
                                          **step.cost.columns()), item)
        try:
            gen = await step.ask(roles.writer, text, settings.respond_sampling,
                                 request_seed(settings, row["seed_id"], "respond"))
        except EngineDown:
            raise
        except Exception as exc:
            return Candidate(empty_record(**seed, **error_columns(exc), model=roles.writer.model_name,
                                          **step.cost.columns()), None)
        return Candidate(empty_record(**seed, response=gen.text, status=KEPT, response_tokens=gen.completion_tokens,
                                      response_truncated=not gen.finished,
                                      response_reason=rules.reason_after_response(gen.text),
                                      model=roles.writer.model_name, **step.cost.columns()), item)
    except EngineDown:
        raise
    except Exception as exc:  # e.g. a tokenizer that fails on this row: the row is still accounted for
        return Candidate(empty_record(id=row["seed_id"], root_id=row["seed_id"], round=0, op=SEED_OP,
                                      instruction=row["instruction"], source=row["source"], line=row["line"],
                                      **error_columns(exc)), None)
    finally:
        presume(presumed, None)


async def evolve_once(item: PoolItem, round_index: int, roles: Roles, settings: EvolveSettings,
                      step: Step, presumed: asyncio.Future, checked: asyncio.Future | None = None) -> Candidate:
    """One candidate of one round: rewrite, cheap text rules, then answer and equality check together,
    answer rules, equality rule. The next item is the candidate if kept, else the parent; None on error.
    `presumed` learns the next item as soon as the text rules have spoken (the candidate if they pass);
    `checked` learns what comes next as soon as the equality check has spoken, while the answer still runs:
    the parent if it eliminated the candidate (the answer's rules only decide which rule the record names),
    else the candidate (which only the answer's rules 2 and 3 may still eliminate, rarely: never in make
    run's evolve stage); a failed answer, which ends the chain, makes either wrong."""
    op = choose_operation(settings.seed, item.id, round_index, settings.operations)
    new_id = candidate_id(item.id, round_index, op)
    found = dict(instruction=None, response=None, equality=rules.SKIPPED)
    try:
        gen = await step.ask(roles.writer, evolve_prompt(op, item.text), settings.evolve_sampling,
                             request_seed(settings, new_id, "evolve"))
        found["instruction"] = text = rules.clean_evolved_instruction(gen.text)
        reason = rules.reason_before_response(item.text, text, truncated=not gen.finished)
        presume(presumed, item if reason is not None else PoolItem(new_id, item.root_id, text))
        if reason is None:
            # The answer and the equality check at once: the chain keeps a request in the engine's
            # queue while its check is scored (asked one after the other, a batch lost a row to every
            # chain waiting for its check). Rule 2 still comes first: its elimination keeps `skipped`.
            answered = asyncio.ensure_future(
                step.ask(roles.writer, text, settings.respond_sampling, request_seed(settings, new_id, "respond")))
            judged = asyncio.ensure_future(
                check_equality(step, roles, item.text, text, settings, request_seed(settings, new_id, "judge")))
            if checked is not None:
                candidate = PoolItem(new_id, item.root_id, text)
                judged.add_done_callback(lambda done: after_check(done, checked, item, candidate))
            gen, equality = await asyncio.gather(answered, judged, return_exceptions=True)
            if isinstance(equality, (EngineDown, asyncio.CancelledError)):
                raise equality  # a dead judge stops the actor whatever the answer says
            if isinstance(gen, BaseException):
                raise gen
            found.update(response=gen.text, response_tokens=gen.completion_tokens, response_truncated=not gen.finished)
            reason = rules.reason_after_response(gen.text)
            if reason is None:
                if isinstance(equality, BaseException):
                    raise equality
                found.update(equality)
                reason = rules.reason_after_equality(found["equality"])
        outcome = dict(status=KEPT if reason is None else ELIMINATED, reason=reason)
    except EngineDown:
        raise
    except Exception as exc:
        outcome = error_columns(exc)
    finally:
        presume(presumed, None)
    tokens = roles.writer.count_tokens([found["instruction"]])[0] if found["instruction"] is not None else None
    record = empty_record(id=new_id, root_id=item.root_id, parent_id=item.id, round=round_index, op=op,
                          instruction_tokens=tokens, model=roles.writer.model_name, **found, **outcome,
                          **step.cost.columns())
    if outcome["status"] == KEPT:
        return Candidate(record, PoolItem(new_id, item.root_id, found["instruction"]))
    return Candidate(record, item if outcome["status"] == ELIMINATED else None)


def after_check(judged: asyncio.Future, checked: asyncio.Future, parent: PoolItem, candidate: PoolItem) -> None:
    """What the next round evolves once the equality check has spoken (nothing said if it failed)."""
    if not judged.cancelled() and judged.exception() is None:
        presume(checked, parent if rules.reason_after_equality(judged.result()["equality"]) else candidate)


@dataclass
class Pending:
    """A round of a chain in flight, perhaps evolving a candidate whose own verdict is not back yet."""
    round_index: int
    item: PoolItem | None  # what it evolves (None for round 0: the seed row)
    step: Step
    presumed: asyncio.Future  # the next item as guessed: after its text rules, or after its check (take_check)
    task: asyncio.Future  # its Candidate
    checked: asyncio.Future | None = None  # the next item once its equality check has spoken (evolve_once)
    settled: bool = False  # the next item all but known: no verdict to wait for (rounds_ahead_of_a_verdict)
    charged: Cost = field(default_factory=Cost)  # rounds it cancelled when its check spoke (and what they had)


def engine_has_room(generator: Generator) -> bool:
    """Whether the engine would decode a request now beside the ones it has, at no cost to them (hf and
    vLLM say how many rows they have free; an endpoint that bills by the token never says)."""
    spare_rows = getattr(generator, "spare_rows", None)
    return spare_rows is not None and spare_rows() > 0


async def run_chain(row: dict, roles: Roles, settings: EvolveSettings, max_instruction_tokens: int,
                    earlier: list[dict] = ()) -> list[dict]:
    """Every record of one seed row, round 0 to M; a chain that hits an error stops there. Raises
    EngineDown when the engine is down (nothing of the chain is to be recorded then).

    `earlier`: this seed's records from an earlier attempt that ended in an error: the records of its
    finished rounds are kept as they are and the chain goes on from the last good one.

    Rounds ahead (evolve.rounds_ahead): a round's rewrite needs only its parent's text, so up to that
    many later rounds start as soon as the text rules presume what they evolve (a candidate that passed
    them, presumed kept), while the earlier candidates' answers and checks run. Verdicts are taken in
    round order; one that differs from the presumption (answered, then eliminated; an error) cancels the
    rounds started after it, whose cost so far is added to its record, and the chain goes on from what
    the verdict says. The requests and their seeds are those of one round after the other, and so are
    the records, cost columns aside, where the engine's samples depend only on the request.

    Settled rounds (`rounds_ahead_of_a_verdict`) count for none of that many: the seed's own answer, and a
    candidate whose equality check has spoken (`take_check`: if it eliminated the candidate, the guesses
    after it are cancelled at once and the parent evolves next). So with fast checks and slow answers a
    chain may have every round in flight; an answer that fails, or that rules 2 or 3 eliminate after a
    passing check, cancels them all, as any verdict does.

    Fallback rewrites (evolve.fallback_rewrites): while the engine has rows free, the next round's
    rewrite of the head round's own item starts beside it, in case the head's candidate is eliminated
    (the parent goes back to the pool and the next round evolves it again: the same request). A round
    then taken up goes on as if launched then; one not needed is cancelled, its cost added to the
    record of the verdict that made it so. On a small model nearly half the rewrites run to their
    limit and are eliminated, and each is a whole rewrite on its chain's path."""
    records, line = finished_part(earlier), []
    fallback: Pending | None = None

    def start(round_index: int, item: PoolItem | None) -> Pending:
        loop = asyncio.get_running_loop()
        step, presumed, checked = Step(), loop.create_future(), loop.create_future() if round_index else None
        work = (start_chain(row, roles, settings, max_instruction_tokens, step, presumed) if round_index == 0
                else evolve_once(item, round_index, roles, settings, step, presumed, checked))
        # the seed evolves whatever its answer says: only a failed request ends the chain there
        return Pending(round_index, item, step, presumed, asyncio.ensure_future(work), checked,
                       settled=round_index == 0)

    def launch(round_index: int, item: PoolItem | None) -> None:
        nonlocal fallback
        if fallback is not None and (fallback.round_index, fallback.item) == (round_index, item):
            line.append(fallback)  # the same request, started earlier
            fallback = None
            roles.fallbacks.taken += 1
        else:
            line.append(start(round_index, item))

    try:
        launch(len(records), pool_item(records) if records else None)
        while line:
            spoken = next((i for i, pending in enumerate(line)
                           if pending.checked is not None and pending.checked.done()), None)
            if spoken is not None:  # a candidate's equality check has spoken: settled, or the guesses after it moot
                await take_check(line, spoken, roles)
                continue
            head, tail = line[0], line[-1]
            if (fallback is None and settings.fallback_rewrites and 0 < head.round_index < settings.rounds
                    and not head.task.done() and len(line) == 1  # the line is consecutive rounds: none is next yet
                    and not (head.settled and settings.rounds_ahead)  # its check spoke: the next round is known
                    and engine_has_room(roles.writer)):
                fallback = start(head.round_index + 1, head.item)
                roles.fallbacks.started += 1
            if not head.task.done():  # a verdict already in goes first: nothing is started on a settled guess
                ahead = rounds_ahead_of_a_verdict(line, settings)
                ahead_room = tail.round_index < settings.rounds and ahead <= settings.rounds_ahead
                if ahead_room and tail.presumed.done() and tail.presumed.result() is not None:
                    launch(tail.round_index + 1, tail.presumed.result())
                    continue
                waits = {head.task} | ({tail.presumed} if ahead_room and not tail.presumed.done() else set()) | {
                    pending.checked for pending in line if pending.checked is not None}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                continue
            line.pop(0)
            candidate = head.task.result()
            record = with_cost(candidate.record, head.charged) if head.charged.requests else candidate.record
            if line and candidate.next_item != head.presumed.result():
                record = with_cost(record, await cancel_rounds(line, roles))
            if fallback is not None and candidate.next_item != fallback.item:  # kept, or an error: not needed
                record = with_cost(record, await cancel_rounds([fallback], roles))
                fallback = None
            records.append(record)
            if not line and candidate.next_item is not None and head.round_index < settings.rounds:
                launch(head.round_index + 1, candidate.next_item)  # takes up the fallback when it is this round
    except BaseException:
        for pending in line + ([fallback] if fallback else []):
            pending.task.cancel()  # on a task already failed, this also keeps asyncio from logging its error
        raise
    return records


def rounds_ahead_of_a_verdict(line: list[Pending], settings: EvolveSettings) -> int:
    """The rounds of `line` started ahead of a verdict that may still send the chain elsewhere. A settled
    round is none: the seed's own answer (round 0; the seed evolves whatever it says) and a candidate whose
    equality check has spoken (eliminated: its parent evolves whatever the answer says; passed: only the
    answer's rules 2 and 3 may still eliminate it); only a failed request ends the chain there. Counted as
    one, an answer held the chain's next rewrite back for all its length (in the 16-seed job, a 128-token
    seed answer kept round 2 waiting 4 s after round 1's rewrite had passed). With evolve.rounds_ahead 0,
    one round after the other, whatever is settled."""
    return sum(not pending.settled for pending in line) if settings.rounds_ahead else len(line)


async def take_check(line: list[Pending], at: int, roles: Roles) -> None:
    """`line[at]`'s equality check has spoken while its answer runs: it is settled. If it eliminated the
    candidate, what comes next is the parent whatever the answer says: the rounds started on the guess
    that it is kept are cancelled, their cost kept for its record, and the chain goes on from the parent
    at once (its record still waits for the answer, whose rules name the reason). A failed answer then
    cancels what was started from the parent; after a passing check, so does an answer that rules 2 or 3
    eliminate, as any verdict that differs from its guess does."""
    pending = line[at]
    guess, pending.checked, pending.settled = pending.checked.result(), None, True
    if guess == pending.presumed.result():
        return
    later = line[at + 1:]
    del line[at + 1:]
    pending.charged.add(await cancel_rounds(later, roles))
    pending.presumed = asyncio.get_running_loop().create_future()
    pending.presumed.set_result(guess)


async def cancel_rounds(line: list[Pending], roles: Roles) -> Cost:
    """Cancel the rounds started on a presumption that did not hold; what they had cost (requests asked,
    tokens of those that finished), with what they had themselves been charged (`take_check`: counted in
    `roles.unused` when it was cancelled)."""
    for pending in line:
        pending.task.cancel()
    await asyncio.gather(*(pending.task for pending in line), return_exceptions=True)
    spent = Cost()
    for pending in line:
        spent.add(pending.step.cost)
    roles.unused.add(spent)
    for pending in line:  # rounds it had itself cancelled on a revision: counted unused then
        spent.add(pending.charged)
    line.clear()
    return spent


def finished_part(chain: list[dict]) -> list[dict]:
    """A chain's records up to its first error (a chain is one record per round, 0 to k); [] when
    round 0 itself failed."""
    ordered = sorted(chain, key=lambda r: r["round"])
    end = next((i for i, r in enumerate(ordered) if r["status"] == ERROR), len(ordered))
    return ordered[:end]


def records_made(chain: list[dict], earlier: list[dict]) -> list[dict]:
    """The records of `chain` that its run made: a chain run again after an error (`earlier`: what an
    earlier run wrote of it) returns that run's finished part ahead of its new rounds."""
    done = len(finished_part(earlier))
    return [record for record in chain if record["round"] >= done]


def pool_item(records: list[dict]) -> PoolItem:
    """What the next round evolves: the chain's last kept record (a failed candidate sent its parent back);
    one the finish stage marked duplicate or contaminated was kept by the rules all the same."""
    last = next(r for r in reversed(records) if r["status"] in SURVIVED)
    text = user_turn(last["instruction"], last["input"]) if last["round"] == 0 else last["instruction"]
    return PoolItem(last["id"], last["root_id"], text)


def chains_by_root(records: list[dict]) -> dict[str, list[dict]]:
    chains: dict[str, list[dict]] = {}
    for record in records:
        chains.setdefault(record["root_id"], []).append(record)
    return chains


def chain_of(row: dict, chains: dict[str, list[dict]]) -> list[dict]:
    """A seed row's records among `chains_by_root` ones (a seed found too long was quarantined)."""
    key = row["seed_id"] if row["error"] is None else quarantine_id(row)
    return chains.get(key) or chains.get(quarantine_id(row), [])


def is_complete(chain: list[dict], retry_errors: bool) -> bool:
    """A written chain needs no more work, unless it ended in an error that is to be retried."""
    return bool(chain) and (not retry_errors or all(r["status"] != ERROR for r in chain))


async def evolve_rows(rows: list[dict], roles: Roles, settings: EvolveSettings,
                      max_instruction_tokens: int) -> list[dict]:
    """All chains of a batch at once; records grouped by seed, seeds in input order."""
    chains = await asyncio.gather(*(run_chain(row, roles, settings, max_instruction_tokens) for row in rows))
    return [record for chain in chains for record in chain]
