"""transformers backend: requests from every chain in flight decoded together in one worker thread.

Callers await one request each; a batcher task on the event loop hands the worker what is queued
(templating, tokenising and the model all run there), so the event loop keeps taking requests.
`batching: continuous` (the default): one decode step at a time over a running batch of up to
`batch_size` rows; between steps finished rows leave and queued requests are prefilled and join
(generation/continuous.py). `batching: static`: one left-padded `generate()` per batch of up to
`batch_size` requests of the same sampling; a static batch runs until its longest row ends, or, once
half of its rows have ended while requests that could share it wait (`batch_refill`), it stops and
the rows still generating go back to the queue with what they generated so far (prefilled again).
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from common.models import resolve_model
from generation import attention
from generation.config import GenerationConfig
from generation.devices import resolve_dtype, use_cuda
from generation.prompts import prompt_token_ids, text_token_ids
from generation.choice import LOGPROBS, option_token_ids, pick, shared_rows
from generation.continuous import Live, TieredBatch, row_rng
from generation.sampling import nucleus_sampler
from generation.types import Choice, Generation, SamplingParams


# Event-loop turns a request's asker gets, once it is answered, to ask its next request before the
# engine's next decode step takes the queue; one asked later waits a whole step (the step runs while the
# loop is free). An evolve chain hands an answer on through a few tasks: measured in the job, its next
# request arrived within 10 turns (most within 3), and the turns cost microseconds against a step's ~100 ms.
ANSWER_YIELDS = 16


class HFGenerator:
    def __init__(self, cfg: GenerationConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.torch = torch
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        path = resolve_model(cfg.model)
        self.model_name = cfg.model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the end of the prompt: the assistant header
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        cuda = use_cuda(cfg.device)
        self.device = "cuda" if cuda else "cpu"
        self.dtype = resolve_dtype(cfg.dtype, cuda)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype),
                                                          attn_implementation=attention_kernel(cfg.attn_implementation, cuda))
        self.model = self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        self._pending: deque = deque()  # (prompt text or a released Row, sampling, future), oldest first
        self._waiting = Counter()  # pending requests per (temperature, top_p), read by the worker's stopping rule
        self._batcher: asyncio.Task | None = None
        self._scoring: deque = deque()  # (rows, option lengths, future) of the choices waiting
        self._scorer: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        tiers = cfg.cache_tiers if self.model.config._attn_implementation == attention.GROUPED_DECODE else 1
        self._running = TieredBatch(self.model, self.eos_ids, self.tokenizer.pad_token_id, self.device, cfg.batch_size,
                                    cfg.prefix_cache_tokens, tiers) if cfg.batching == "continuous" else None
        self.batches = self.batched_rows = 0  # decode steps (static: generate() calls) and their rows: kept full?
        self.released_rows = 0  # rows sent back to the queue by a batch that stopped early (batch_refill)
        self.worker_seconds = 0.0  # the worker thread's time computing (prefill, decode, scoring): is it ever idle?
        self.worker_cpu_seconds = 0.0  # the CPU time its thread had in those seconds (see on_cpu_share)

    @property
    def mean_batch_rows(self) -> float | None:
        """Rows per decode step (static: per generate()) so far: is the engine's batch kept full?"""
        return self.batched_rows / self.batches if self.batches else None

    @property
    def on_cpu_share(self) -> float | None:
        """On CPU: the share of the worker's computing time its thread was running on a core, not waiting
        for one that another process (Ray's own, on a small machine) held; on CUDA its waits are the GPU's."""
        if self.device != "cpu" or not self.worker_seconds:
            return None
        return min(self.worker_cpu_seconds / self.worker_seconds, 1.0)

    @property
    def prefix_cached_share(self) -> float | None:
        """The share of prompt tokens whose KV came from the prefix cache (continuous batching)."""
        prefixes = self._running.prefixes if self._running is not None else None
        return prefixes.reused_tokens / prefixes.prompt_tokens if prefixes and prefixes.prompt_tokens else None

    def spare_rows(self) -> int:
        """Rows a request would find free now: the batch less those decoding and those queued."""
        return self.cfg.batch_size - (len(self._running) if self._running is not None else 0) - len(self._pending)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in text_token_ids(self.tokenizer, texts)]

    def prompt_ids(self, prompt: str) -> list[int]:
        """Rendered and tokenised (user text as plain text), cut from the left: keeps the answer header."""
        return prompt_token_ids(prompt, self.cfg.prompt_format, self.tokenizer)[-self.cfg.max_prompt_tokens:]

    async def generate(self, prompt: str, sampling: SamplingParams) -> Generation:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue(prompt, sampling, future)  # templated and tokenised in the worker (_serve)
        if self._batcher is None or self._batcher.done():
            run = self._run_continuous if self.cfg.batching == "continuous" else self._run_batches
            self._batcher = loop.create_task(run())
        return await future

    def _queue(self, entry, sampling: SamplingParams, future, first: bool = False) -> None:
        (self._pending.appendleft if first else self._pending.append)((entry, sampling, future))
        self._waiting[_kind(sampling)[:2]] += 1

    def _drop_cancelled(self) -> None:
        """Requests cancelled while queued (a round started ahead and then not needed, evol/rounds.py)
        take no row and no place in a batch."""
        cancelled = [request for request in self._pending if request[2].done()]
        if cancelled:
            self._pending = deque(request for request in self._pending if not request[2].done())
            self._waiting.subtract(_kind(sampling)[:2] for _, sampling, _ in cancelled)

    def _take_batch(self) -> list:
        """Requests that can share one generate(). A whole batch of one kind (temperature, top_p and
        max_tokens) goes first: nobody runs past their own limit. Else the largest group of one
        temperature/top_p, whatever their max_tokens (each answer is cut to its own): measured, a step
        of a full mixed batch yields more tokens than a half-empty exact one, since a CPU decode step
        costs nearly the same at batch 4 and 8. Within the group, the oldest request and those whose
        prompts are closest to it in length: a batch is padded to its longest prompt, and short answer
        prompts padded to a long rewrite prompt's length cost more prefill than they decode."""
        kinds = Counter(_kind(sampling) for _, sampling, _ in self._pending)
        full = [kind for kind, n in kinds.items() if n >= self.cfg.batch_size]
        if full:
            chosen, width = full[0], 3
        else:
            shared = Counter(_kind(sampling)[:2] for _, sampling, _ in self._pending)
            chosen, width = max(shared, key=shared.get), 2  # counters keep insertion order: oldest wins ties
        group = [i for i, (_, sampling, _) in enumerate(self._pending) if _kind(sampling)[:width] == chosen]
        anchor = _chars(self._pending[group[0]][0])  # the oldest of the group always goes: nobody waits forever
        taken = set(sorted(group, key=lambda i: (abs(_chars(self._pending[i][0]) - anchor), i))[:self.cfg.batch_size])
        batch = [item for i, item in enumerate(self._pending) if i in taken]
        self._pending = deque(item for i, item in enumerate(self._pending) if i not in taken)
        self._waiting.subtract(_kind(sampling)[:2] for _, sampling, _ in batch)
        return batch

    async def _run_batches(self) -> None:
        """Runs while requests wait and ends when none is left (the next request starts it again): a
        batcher waiting forever was still pending when an actor's event loop closed, and every actor
        printed "Task was destroyed but it is pending!" at shutdown."""
        loop = asyncio.get_running_loop()
        while self._pending:
            if len(self._pending) < self.cfg.batch_size and self.cfg.batch_wait_ms:
                await asyncio.sleep(self.cfg.batch_wait_ms / 1000)  # let chains that just got answers ask again
            self._drop_cancelled()
            if not self._pending:
                break
            batch = self._take_batch()
            try:
                results = await loop.run_in_executor(self._worker, self._timed, self._serve,
                                                     [p for p, _, _ in batch], [s for _, s, _ in batch])
            except Exception as exc:  # the engine itself failed: every request of the batch learns why
                results = [exc] * len(batch)
            released = [(row, sampling, future) for row, (_, sampling, future) in zip(results, batch)
                        if isinstance(row, Row) and not future.done()]
            for row, sampling, future in reversed(released):  # first in the queue: the oldest go first
                self._queue(row, sampling, future, first=True)
            self.released_rows += len(released)
            for (_, _, future), result in zip(batch, results):
                if not isinstance(result, Row):
                    _settle(future, result)

    async def _run_continuous(self) -> None:
        """Runs while requests wait or rows decode (and ends like `_run_batches`): each turn hands the
        worker the queued requests that fit in the running batch, and it prefills them and decodes one
        step for all rows; the rows that finished are answered."""
        loop, batch = asyncio.get_running_loop(), self._running
        while self._pending or len(batch):
            if not len(batch) and len(self._pending) < self.cfg.batch_size and self.cfg.batch_wait_ms:
                await asyncio.sleep(self.cfg.batch_wait_ms / 1000)  # an idle engine waits for a batch to form
            self._drop_cancelled()
            admitted = [self._pending.popleft() for _ in range(min(self.cfg.batch_size - len(batch), len(self._pending)))]
            self._waiting.subtract(_kind(sampling)[:2] for _, sampling, _ in admitted)
            cancelled = {row.handle for row in batch.rows if row.handle.done()}  # the worker is idle between turns
            try:
                results = await loop.run_in_executor(self._worker, self._timed, self._continue, admitted, cancelled)
            except Exception as exc:  # the engine itself failed: every request in it learns why
                results = [(future, exc) for future in batch.fail_all() + [future for _, _, future in admitted]]
            for future, result in results:
                _settle(future, result)
            if results:  # before the next turn takes the queue: see ANSWER_YIELDS
                for _ in range(ANSWER_YIELDS):
                    await asyncio.sleep(0)

    def _timed(self, work, *args):
        """Runs `work` on the worker thread, its seconds counted in `worker_seconds` (and its thread's CPU
        time in `worker_cpu_seconds`)."""
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return work(*args)
        finally:
            self.worker_seconds += time.perf_counter() - start
            self.worker_cpu_seconds += time.thread_time() - cpu

    def _continue(self, admitted: list, cancelled: set) -> list:
        """In the worker thread: the admitted requests templated, tokenised and prefilled into the running
        batch (one that cannot be tokenised fails alone), then one decode step. Returns (future, Generation
        or exception) for every request that ended."""
        batch, ended, joining = self._running, [], []
        waiting = [row.handle for row in batch.rows if row.handle not in cancelled]
        try:
            batch.drop(cancelled)
            for prompt, sampling, future in admitted:
                try:
                    joining.append(Live(future, self.prompt_ids(prompt), sampling, row_rng(sampling)))
                except Exception as exc:
                    ended.append((future, exc))
            done = batch.admit(joining) if joining else []
            if len(batch):
                self.batches, self.batched_rows = self.batches + 1, self.batched_rows + len(batch)
                done += batch.step()
            return ended + [(row.handle, self._answer(row.tokens, row.prompt_tokens, row.finished)) for row in done]
        except Exception as exc:  # the engine failed mid-turn: every request it held or took learns why
            batch.fail_all()
            return ended + [(future, exc) for future in waiting + [row.handle for row in joining]]

    def _answer(self, ids: list[int], prompt_tokens: int, finished: bool) -> Generation:
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Generation(text=text, prompt_tokens=int(prompt_tokens), completion_tokens=len(ids), finished=finished)

    def _serve(self, prompts: list, samplings: list[SamplingParams]) -> list:
        """In the worker thread, off the event loop: each prompt templated and tokenised (one that cannot
        be fails alone, as its exception; a released row is already), then one generate() for the rest.
        Returns a Generation per request, or a Row for one that the batch released unfinished."""
        ids = []
        for prompt in prompts:
            try:
                ids.append(prompt if isinstance(prompt, Row) else Row(self.prompt_ids(prompt), len(prompt)))
            except Exception as exc:
                ids.append(exc)
        ready = [i for i, item in enumerate(ids) if not isinstance(item, Exception)]
        if ready:
            for i, gen in zip(ready, self._generate_batch([ids[i] for i in ready], [samplings[i] for i in ready])):
                ids[i] = gen
            self.batches, self.batched_rows = self.batches + 1, self.batched_rows + len(ready)
        return ids

    def _generate_batch(self, rows: list[Row], samplings: list[SamplingParams]) -> list:
        """One left-padded generate() for requests of one temperature/top_p, up to the largest max_tokens
        left to any of them. A row is done at its EOS or its own limit; with `batch_refill` the call ends
        once half of its rows are done while a request that could take a freed place waits, and each row
        not done comes back as a Row holding what it generated, to go on in a later batch."""
        torch, sampling = self.torch, samplings[0]
        enc = self.tokenizer.pad({"input_ids": [row.prompt + row.generated for row in rows]}, padding=True,
                                 return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        greedy = sampling.temperature == 0
        if not greedy and all(s.seed is not None for s in samplings):
            # One random stream per batch: the same requests batched together draw the same samples
            # (always at batch_size 1); per-request streams are not possible inside one generate().
            torch.manual_seed(batch_seed([s.seed for s in samplings]))
        limits = [s.max_tokens - len(row.generated) for row, s in zip(rows, samplings)]
        kind = _kind(sampling)[:2]
        waiting = (lambda: self._waiting.get(kind, 0)) if self.cfg.batch_refill and len(rows) > 1 else None
        stop = StopRows(enc["input_ids"].shape[1], limits, self.eos_ids, waiting, self.device)
        with torch.inference_mode():
            out = self.model.generate(  # sampled by our processor (generation/sampling.py), then taken by argmax
                **enc, do_sample=False, max_new_tokens=max(limits), stopping_criteria=[stop],
                logits_processor=[] if greedy else [nucleus_sampler(sampling.temperature, sampling.top_p)],
                temperature=None, top_p=None, top_k=None, pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
        results = []
        for row, ids, limit, released in zip(rows, new_tokens, limits, stop.released_rows()):
            if released:
                results.append(Row(row.prompt, row.chars, row.generated + ids))
            else:
                results.append(self._to_generation(row.generated + ids[:limit], len(row.prompt)))
        return results

    def _to_generation(self, ids: list[int], prompt_tokens: int) -> Generation:
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        return self._answer(ids if end is None else ids[:end], prompt_tokens, end is not None)

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
        if self._scorer is not None:
            self._scorer.cancel()
        self._worker.shutdown(wait=False)

    # --- constrained answers (generation/choice.py): every option scored, no decoding -------------

    async def choose(self, prompt: str, options: list[str], sampling: SamplingParams) -> Choice:
        """The likeliest option after the prompt: log P(option | prompt) from one forward pass over the
        prompt and the options' tokens, options that extend one another sharing a row (`shared_rows`),
        batched with the other choices in flight and run on the generate thread (the model is never used
        by two threads at once)."""
        loop = asyncio.get_running_loop()
        ids = self.prompt_ids(prompt)
        tails = option_token_ids(self.tokenizer, options, self.cfg.prompt_format)
        contexts, where = shared_rows(tails)
        rows = [ids + context for context in contexts]
        future = loop.create_future()
        self._scoring.append((rows, [len(context) for context in contexts], list(zip(where, tails)), future))
        if self._scorer is None or self._scorer.done():
            self._scorer = loop.create_task(self._run_scoring())
        scores = await future
        option, margin = pick(options, scores)
        return Choice(option, LOGPROBS, margin, option, prompt_tokens=sum(map(len, rows)), completion_tokens=0)

    async def _run_scoring(self) -> None:
        """Like `_run_batches` (and ends like it when nothing waits): up to batch_size choices per
        forward pass, run on the generate thread."""
        loop = asyncio.get_running_loop()
        while self._scoring:
            if len(self._scoring) < self.cfg.batch_size and self.cfg.batch_wait_ms:
                await asyncio.sleep(self.cfg.batch_wait_ms / 1000)
            batch = [self._scoring.popleft() for _ in range(min(self.cfg.batch_size, len(self._scoring)))]
            rows, extra, options, offset = [], [], [], 0
            for rows_of, extra_of, options_of, _ in batch:  # one list for the batch: option rows shift
                rows += rows_of
                extra += extra_of
                options += [(offset + row, tail) for row, tail in options_of]
                offset += len(rows_of)
            try:
                scores = await loop.run_in_executor(self._worker, self._timed, self._score_rows, rows, extra, options)
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for *_, options_of, future in batch:
                if not future.done():
                    future.set_result(scores[:len(options_of)])
                scores = scores[len(options_of):]

    def _score_rows(self, rows: list[list[int]], extra: list[int], options: list[tuple[int, list[int]]]) -> list[float]:
        """log P(option | prompt), summed over the option's tokens, for each (row, option tokens) of
        `options`: one left-padded forward pass, logits kept only at the rows' ends. Row r is a prompt
        and then `extra[r]` tokens, which begin with each of its options' tokens but the last
        (generation/choice.py `shared_rows`): an option's tokens are predicted at its prompt's last
        position and the ones after it."""
        torch = self.torch
        enc = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
        keep = max(extra) + 1  # the prompts' last positions and what follows them
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=keep).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            # every option token's log-probability in one gather and one copy off the device
            picked = logprobs[[row for row, tail in options for _ in tail],
                              [keep - 1 - extra[row] + t for row, tail in options for t in range(len(tail))],
                              [token for _, tail in options for token in tail]].tolist()
        scores, at = [], 0
        for _, tail in options:
            scores.append(sum(picked[at:at + len(tail)]))
            at += len(tail)
        return scores


@dataclass
class Row:
    """A request's prompt ids and what it generated in earlier batches that stopped before it was done."""
    prompt: list[int]
    chars: int  # the prompt text's length: batches are formed by it before prompts are tokenised
    generated: list[int] = field(default_factory=list)


class StopRows:
    """A transformers stopping criterion for one batch. A row is done at its EOS or its own max_tokens,
    so a mixed batch ends when every row is done, not at the batch's largest limit. With `waiting`
    (how many requests that could share the batch are queued), the whole batch stops once half of
    its rows are done and one waits: the rest would otherwise decode for the longest row alone."""

    def __init__(self, prompt_length: int, limits: list[int], eos_ids, waiting=None, device: str = "cpu"):
        import torch

        self.prompt_length, self.waiting = prompt_length, waiting
        self.limits = torch.tensor(limits, device=device)  # no copy per step
        self.eos = torch.tensor(sorted(eos_ids), device=device)
        self.ended = torch.zeros(len(limits), dtype=torch.bool, device=device)
        self.released = None  # the rows not done when the batch stopped early

    def __call__(self, input_ids, scores, **kwargs):
        self.ended |= (input_ids[:, -1:] == self.eos).any(dim=1)  # generate() pads a row after its EOS
        done = self.ended | ((input_ids.shape[1] - self.prompt_length) >= self.limits)
        if self.waiting is not None and self.waiting() > 0:  # counting live rows reads the device: only then
            live = int((~done).sum())
            if 0 < live * 2 <= len(done):
                self.released = ~done
                return done.new_ones(done.shape)
        return done

    def released_rows(self) -> list[bool]:
        return self.released.tolist() if self.released is not None else [False] * len(self.limits)


def attention_kernel(setting: str, cuda: bool) -> str:
    """The `attn_implementation` transformers loads the model with: on CPU, SDPA's kernel for one decode
    token is the slow part of a step (generation/attention.py)."""
    if setting == "auto":
        setting = "sdpa" if cuda else "grouped_decode"
    return attention.register() if setting == "grouped_decode" else setting


def _settle(future, result) -> None:
    """Answers a request still waiting with its Generation, or its exception."""
    if not future.done():
        (future.set_exception if isinstance(result, Exception) else future.set_result)(result)


def batch_seed(seeds: list[int]) -> int:
    """One seed for a batch of requests' seeds, the same in every process."""
    return int.from_bytes(hashlib.sha256(",".join(map(str, seeds)).encode()).digest()[:8], "big")


def _chars(entry) -> int:
    """A queued prompt's length in characters; a released row's counts what it generated at ~4 per token."""
    return entry.chars + 4 * len(entry.generated) if isinstance(entry, Row) else len(entry)


def _kind(sampling: SamplingParams) -> tuple:
    """(temperature, top_p, max_tokens): requests of one kind run to the same length; the first two
    decide whether requests can share a generate() at all."""
    return sampling.temperature, sampling.top_p, sampling.max_tokens
