"""The hf backend's continuous batching (generation/continuous.py): rows join and leave a running batch
between decode steps with their KV cache kept, and every answer is the one the request gets alone."""
import asyncio
import time

import pytest

from generation import GenerationConfig, SamplingParams, build_generator
from generation.continuous import (PREFIX_BLOCK, Live, PrefixCache, RunningBatch, TieredBatch, choose_tier,
                                   prefill_groups, row_rng)

LIMITS = (3, 12, 6, 9, 20, 1, 15)
PROMPTS = [f"question {i} " + "word " * (7 * i) for i in range(len(LIMITS))]  # unlike lengths: rows are padded


def engine_of(model: str, **settings):
    return build_generator(GenerationConfig(model=model, dtype="float32", torch_threads=1, **settings))


def answers(generator, prompts, samplings):
    async def run():  # one event loop: the engine's batcher lives in it
        return await asyncio.gather(*(generator.generate(p, s) for p, s in zip(prompts, samplings)))

    return asyncio.run(run())


def test_prefill_groups_keep_padding_within_a_quarter_of_the_real_tokens():
    assert prefill_groups([100]) == [[0]]
    # 10 and 12 share a prefill (24 padded tokens for 22 real); 40 and 48 too; 300 goes alone
    assert prefill_groups([300, 12, 40, 10, 48]) == [[3, 1], [2, 4], [0]]
    for lengths in ([5, 500, 7, 6, 480, 9], list(range(1, 40)), [64] * 9):
        groups = prefill_groups(lengths)
        assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
        for group in groups:
            real = sum(lengths[i] for i in group)
            assert len(group) * max(lengths[i] for i in group) <= 1.25 * real


def test_greedy_answers_in_a_running_batch_are_the_answers_alone(tiny_llama):
    """Seven requests of unlike prompt lengths and limits through a batch of 3: rows leave at their
    limits and queued ones join mid-flight, left-padded to the batch's cache; each answer (fp32, greedy)
    is token for token the one its request gets by itself."""
    samplings = [SamplingParams(0.0, 1.0, n) for n in LIMITS]
    alone = [answers(engine_of(tiny_llama, batch_size=1), [p], [s])[0] for p, s in zip(PROMPTS, samplings)]
    generator = engine_of(tiny_llama, batch_size=3, batch_wait_ms=20)
    together = answers(generator, PROMPTS, samplings)
    assert [(a.text, a.prompt_tokens, a.completion_tokens, a.finished) for a in together] == [
        (a.text, a.prompt_tokens, a.completion_tokens, a.finished) for a in alone]
    assert [a.completion_tokens for a in together] == list(LIMITS)  # the tiny model never says EOS here
    engine = generator.inner
    # rows shared decode steps: fewer steps than tokens, and the batch was kept full while requests waited
    assert engine.batches < sum(LIMITS) - len(LIMITS)
    assert engine.mean_batch_rows > 2.0
    assert len(engine._running) == 0 and engine._running.empty  # nothing left behind


def test_a_seeded_request_draws_the_same_answer_whatever_it_is_batched_with(tiny_llama):
    """Each row samples from its own stream (its request's seed): at T=1 a seeded request gets the same
    text alone and in a batch with others, as a redone chain asks with the same seeds."""
    seeded = SamplingParams(1.0, 0.9, 12, seed=1234)
    alone = answers(engine_of(tiny_llama, batch_size=1), ["question"], [seeded])[0]
    others = [SamplingParams(1.0, 0.9, n) for n in (4, 16, 7)]
    with_others = answers(engine_of(tiny_llama, batch_size=4), ["long question " * 9, "question", "q", "x y z"],
                          [others[0], seeded, *others[1:]])[1]
    assert with_others.text == alone.text and with_others.completion_tokens == 12


def test_greedy_and_sampled_rows_share_a_batch(tiny_llama):
    greedy, sampled = SamplingParams(0.0, 1.0, 10), SamplingParams(1.0, 0.95, 10, seed=7)
    alone = answers(engine_of(tiny_llama, batch_size=1), ["a greedy one"], [greedy])[0]
    generator = engine_of(tiny_llama, batch_size=4)
    mixed = answers(generator, ["a greedy one", "a sampled one", "another"], [greedy, sampled, sampled])
    assert mixed[0].text == alone.text
    assert generator.inner.batches == 9  # one prefill gives the first token, nine steps the rest, all rows at once


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return engine_of(tiny_llama, batch_size=4).inner


def live(engine, prompt: str, max_tokens: int, handle) -> Live:
    sampling = SamplingParams(0.0, 1.0, max_tokens)
    return Live(handle, engine.prompt_ids(prompt), sampling, row_rng(sampling))


def test_a_row_ends_at_its_eos_without_it(engine):
    """The EOS is not part of the answer and the row is marked finished; the other row goes on."""
    probe = RunningBatch(engine.model, set(), engine.tokenizer.pad_token_id, "cpu")
    probe.admit([live(engine, "question", 8, "probe")])
    while len(probe):
        [*finished] = probe.step()
    tokens = finished[0].tokens
    eos = tokens[3]  # the greedy answer's fourth token stands in for an EOS
    first = tokens.index(eos)
    batch = RunningBatch(engine.model, {eos}, engine.tokenizer.pad_token_id, "cpu")
    done = batch.admit([live(engine, "question", 8, "a"), live(engine, "a longer question " * 4, 40, "b")])
    while not any(d.handle == "a" for d in done):
        done += batch.step()
    [ended] = [d for d in done if d.handle == "a"]
    assert ended.finished and ended.tokens == tokens[:first] and eos not in ended.tokens
    # the other row is still decoding, or it ended at its own EOS (the tiny model repeats itself)
    assert all(d.finished and eos not in d.tokens for d in done if d.handle == "b")
    assert [row.handle for row in batch.rows] == ([] if len(done) == 2 else ["b"])


def test_the_cache_loses_the_padding_of_rows_that_left(engine):
    """A long prompt pads a short one to its length; once the long row leaves, the columns only it used
    go (the cache is copied into smaller buffers), so the short row no longer attends over them."""
    short, long = engine.prompt_ids("hi"), engine.prompt_ids("a long prompt " * 20)
    batch = RunningBatch(engine.model, set(), engine.tokenizer.pad_token_id, "cpu")
    batch.admit([live(engine, "a long prompt " * 20, 2, "long"), live(engine, "hi", 10, "short")])
    short_row = [row.handle for row in batch.rows].index("short")  # prefilled apart (unlike lengths), then joined
    assert batch.width == len(long) and int(batch.mask[short_row].sum()) == len(short)
    assert batch.mask.shape[1] > len(long)  # spare columns around the batch's, masked for every row
    copies = batch.copies
    done = batch.step()  # the long row makes its second token and leaves
    assert [d.handle for d in done] == ["long"] and [row.handle for row in batch.rows] == ["short"]
    assert batch.width == len(short) + 1 and int(batch.mask.sum()) == len(short) + 1
    assert bool(batch.mask[:, batch.start:batch.end].all())
    columns = batch.mask.shape[1]
    assert columns < len(long) and batch.copies == copies + 1
    assert all(layer.keys.shape == (1, 1, columns, layer.keys.shape[3]) for layer in batch.cache.layers)


def test_rows_that_join_leave_and_outgrow_the_buffers_decode_as_they_would_alone(lively_llama):
    """Rows of unlike prompt lengths and limits join a running batch of at most three as others leave
    (a leaving row's slot is taken by the last one), some prompts longer than the batch and some rows
    longer than its spare columns: every one of the cache's moves is taken, and each row's greedy
    tokens (fp32) are those transformers' generate() gives its prompt alone."""
    import torch

    engine = engine_of(lively_llama, batch_size=3).inner
    requests = [("hi", 40), ("x", 12), ("medium sized prompt " * 6, 30), ("another long long prompt " * 25, 5),
                ("q", 70), ("a long prompt " * 12, 3), ("last one " * 6, 50)]
    batch = RunningBatch(engine.model, set(), engine.tokenizer.pad_token_id, "cpu", max_rows=3)
    queue, tokens, slots = list(enumerate(requests)), {}, set()
    while queue or len(batch):
        joining = [queue.pop(0) for _ in range(min(3 - len(batch), len(queue)))]
        done = batch.admit([live(engine, prompt, limit, i) for i, (prompt, limit) in joining]) if joining else []
        if len(batch):
            slots.add(batch.cache.layers[0].key_slots.shape[0])
            done += batch.step()
        tokens.update((d.handle, d.tokens) for d in done)
    assert batch.cache is None and batch.copies >= 3 and slots == {3}  # 1, 2, then 3 (doubling, up to max_rows)
    for i, (prompt, limit) in enumerate(requests):
        ids = torch.tensor([engine.prompt_ids(prompt)])
        with torch.inference_mode():
            alone = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=limit,
                                          eos_token_id=None, pad_token_id=engine.tokenizer.pad_token_id)
        assert tokens[i] == alone[0, ids.shape[1]:].tolist(), i


def test_a_cancelled_request_leaves_the_batch(engine):
    batch = RunningBatch(engine.model, set(), engine.tokenizer.pad_token_id, "cpu")
    batch.admit([live(engine, "one", 30, "kept"), live(engine, "two", 30, "cancelled")])
    batch.drop({"cancelled"})
    assert [row.handle for row in batch.rows] == ["kept"] and batch.next_tokens.shape == (1,)
    assert all(layer.keys.shape[0] == 1 for layer in batch.cache.layers) and batch.mask.shape[0] == 1
    batch.step()
    assert len(batch.rows[0].generated) == 2


def test_an_engine_failure_mid_step_reaches_every_request_and_the_engine_goes_on(tiny_llama):
    """A failure after a step took finished rows out of the batch (here: decoding their text) must still
    answer every request the batch held, not leave them waiting forever; the next request runs."""
    generator = engine_of(tiny_llama, batch_size=3)
    engine, calls = generator.inner, []
    original = engine._answer

    def broken(*args):
        calls.append(args)
        raise RuntimeError("decode broke")

    engine._answer = broken
    samplings = [SamplingParams(0.0, 1.0, n) for n in (3, 10, 10)]  # the first ends a turn after it joined

    async def run():
        return await asyncio.wait_for(asyncio.gather(*(generator.generate(f"q{i}", s) for i, s in enumerate(samplings)),
                                                     return_exceptions=True), timeout=60)

    results = asyncio.run(run())
    assert len(calls) == 1 and [str(r) for r in results] == ["decode broke"] * 3
    assert len(engine._running) == 0 and engine.worker_seconds > 0
    engine._answer = original
    assert answers(generator, ["again"], [SamplingParams(0.0, 1.0, 4)])[0].completion_tokens == 4


def test_a_request_asked_as_soon_as_the_one_before_it_is_answered_joins_the_next_step(tiny_llama):
    """An evolve chain asks its next request once the one before is answered, its answer handed on
    through tasks (evol/rounds.py starts a round as a task and waits on it). That request must join the
    engine's next decode step, not the one after: along a chain, a lost step per request adds up. A long
    request keeps the batch stepping while a chain asks six requests of two tokens, one after the other:
    each is prefilled (its first token) and decoded (its second) in the turn it joins."""
    generator = engine_of(tiny_llama, batch_size=4)
    engine = generator.inner

    async def handed_on(prompt: str):
        task = asyncio.ensure_future(generator.generate(prompt, SamplingParams(0.0, 1.0, 2)))
        await asyncio.wait({task})
        return task.result()

    async def chain():
        await asyncio.sleep(0)  # the long request is queued first
        start = engine.batches
        for hop in range(6):
            assert (await handed_on(f"hop {hop}")).completion_tokens == 2
        return engine.batches - start

    async def run():
        long = asyncio.ensure_future(generator.generate("long", SamplingParams(0.0, 1.0, 40)))
        steps = await chain()
        assert not long.done()  # the batch was stepping for the long request throughout
        await long
        return steps

    assert asyncio.run(run()) == 6


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_request_cancelled_while_queued_is_never_decoded(tiny_llama, batching):
    """A chain's round started ahead and cancelled (evol/rounds.py) may still be queued: it takes no row.
    One row at a time: the second request waits in the queue while the first decodes, then a third
    request, asked after the first is answered, queues behind it."""
    def rows_decoded(second: str | None):
        generator = engine_of(tiny_llama, batch_size=1, batching=batching)

        async def run():
            first = asyncio.ensure_future(generator.generate("q0", SamplingParams(0.0, 1.0, 12)))
            if second is not None:
                other = asyncio.ensure_future(generator.generate("q1", SamplingParams(0.0, 1.0, 12)))
                await asyncio.sleep(0)
                if second == "cancelled":
                    other.cancel()
            answer = await first
            last = await generator.generate("q2", SamplingParams(0.0, 1.0, 12))
            return answer.text, last.text

        texts = asyncio.run(run())
        return generator.inner.batched_rows, texts

    (alone, texts), (both, _), (cancelled, texts_beside) = rows_decoded(None), rows_decoded("kept"), rows_decoded("cancelled")
    assert cancelled == alone < both and texts_beside == texts


def test_the_prefix_cache_finds_the_longest_cached_prefix_in_whole_blocks_and_forgets_the_least_recent():
    block = PREFIX_BLOCK
    cache = PrefixCache(max_tokens=4 * block)
    first = list(range(3 * block + 5))
    cache.store(first, lambda length: [("kv of", length)])
    assert cache.tokens == 3 * block and len(cache.entries) == 1  # whole blocks only
    entry, length = cache.lookup(first[:2 * block] + [-1] * (block + 3))  # two blocks in common
    assert length == 2 * block and entry.tokens == first[:3 * block] and entry.layers == [("kv of", 3 * block)]
    assert cache.lookup(first)[1] == 3 * block and cache.lookup(first[:3 * block])[1] == 2 * block  # the last token
    assert cache.lookup([-1] * 40) is None and cache.lookup(first[:block]) is None  # is always prefilled
    cache.store(first, lambda length: [("again", length)])
    assert cache.tokens == 3 * block  # a prefix kept once
    other = [-2] * (3 * block + 1)
    cache.store(other, lambda length: [("other", length)])  # 6 blocks > 4: the least recently used goes
    assert cache.tokens == 3 * block and cache.lookup(first) is None and cache.lookup(other)[1] == 3 * block
    cache.entries[next(iter(cache.entries))].tokens[0] = -3  # as if two prefixes had one hash
    assert cache.lookup(other) is None
    assert cache.reused_tokens == 2 * block + 3 * block + 2 * block + 3 * block


def test_prompts_that_share_an_opening_prefill_only_the_rest_and_answer_as_without_the_cache(lively_llama):
    """The first prompt is prefilled whole and its blocks kept; the next two, which begin like it, reuse
    them and prefill what follows, together (the shorter one padded), and are kept in turn; the last
    begins like the second and reuses its blocks past the opening. Greedy answers (fp32) are those of
    an engine without the cache."""
    opening = "Rewrite the prompt below into a more complex version that a person can still answer well. " * 2
    second = opening + "What is 2 + 2? Show each step of the sum."
    prompts = [opening + "Name three rivers.", second,
               opening + "Write a haiku about rain today, then explain each of its images in one sentence.",
               second + " Then do 3 + 3 the same way."]
    samplings = [SamplingParams(0.0, 1.0, 16)] * 4
    without = answers(engine_of(lively_llama, batch_size=4, prefix_cache_tokens=0), prompts, samplings)
    generator = engine_of(lively_llama, batch_size=3, batch_wait_ms=50, prefix_cache_tokens=4096)
    cached = [answer for batch in (prompts[:1], prompts[1:3], prompts[3:])
              for answer in answers(generator, batch, samplings[:len(batch)])]
    assert [(a.text, a.prompt_tokens, a.completion_tokens) for a in cached] == [
        (a.text, a.prompt_tokens, a.completion_tokens) for a in without]
    engine = generator.inner
    ids = [engine.prompt_ids(p) for p in prompts]

    def shared(a, b):
        return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) // PREFIX_BLOCK * PREFIX_BLOCK

    reused = [shared(ids[0], ids[1]), shared(ids[0], ids[2]), shared(ids[1], ids[3])]
    assert reused[0] >= 3 * PREFIX_BLOCK and reused[2] > reused[0]  # the last reuses the second's own blocks
    assert engine._running.prefixes.reused_tokens == sum(reused)
    assert engine.prefix_cached_share == sum(reused) / sum(len(i) for i in ids)


def test_rows_with_unlike_cached_prefixes_or_none_prefill_in_one_forward(lively_llama):
    """One prefill of three rows: one reusing a short cached prefix, one a longer one, one none; each
    row's prefix and the rest of its prompt are left-padded apart. Greedy tokens (fp32) are those
    transformers' generate() gives each prompt alone."""
    import torch

    engine = engine_of(lively_llama, batch_size=4, prefix_cache_tokens=4096).inner
    batch = engine._running.tiers[0]  # a prefill within one tier
    opening = "Rewrite the prompt below into a more complex version that a person can still answer well. " * 2
    first = opening + "Name three rivers and say where each one of them meets the sea."
    batch.admit([live(engine, first, 1, "first")])  # prefilled whole; its blocks kept
    prompts = [opening + "What is 2 + 2?", first + " Then two lakes.", "Something else, a prompt of its own."]
    rows = [live(engine, prompt, 12, i) for i, prompt in enumerate(prompts)]
    found = [batch.prefixes.lookup(row.prompt) for row in rows[:2]] + [None]  # the third as if nothing were cached
    cached = [hit[1] if hit else 0 for hit in found]
    assert cached[0] >= 3 * PREFIX_BLOCK and cached[1] > cached[0]
    done = batch._prefill(rows, found)
    while len(batch):
        done += batch.step()
    tokens = {d.handle: d.tokens for d in done}
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([engine.prompt_ids(prompt)])
        with torch.inference_mode():
            alone = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                          eos_token_id=None, pad_token_id=engine.tokenizer.pad_token_id)
        assert tokens[i] == alone[0, ids.shape[1]:].tolist(), i


def test_a_row_joins_the_tier_whose_attention_it_widens_least():
    """Tiers as (rows, width): what a step's attention reads is rows x width per tier."""
    assert choose_tier([(0, 0), (0, 0)], 150) == 0  # all empty: the first
    assert choose_tier([(20, 300), (0, 0)], 150) == 0  # fits the batch's width: no new tier
    assert choose_tier([(2, 300), (0, 0)], 350) == 0  # widens two rows by 50: less than opening a tier
    assert choose_tier([(20, 300), (0, 0)], 730) == 1  # would widen twenty rows by 430 each
    assert choose_tier([(20, 300), (2, 750)], 700) == 1  # the long rows' tier already has the width
    assert choose_tier([(20, 300), (2, 750)], 310) == 0  # 20 x 10 more, not 750 more
    assert choose_tier([(3, 40), (0, 0)], 150, opening=0) == 1


def test_a_long_prompt_decodes_in_a_tier_of_its_own_and_every_answer_is_the_same(lively_llama):
    """Three short prompts and one long one in a batch of two tiers: the long row gets a cache of its own,
    the short rows' cache stays as narrow as they are, and the steps decode both tiers in one forward.
    Every row's greedy tokens (fp32) are those of one cache as wide as the long row, and those transformers'
    generate() gives each prompt alone."""
    import torch

    engine = engine_of(lively_llama, batch_size=4).inner
    prompts = ["What is 2 + 2?", "Name a river.", "Say hello.", "Describe this table: " + "a | b | c\n" * 100]
    limits = [10, 14, 6, 12]
    results = {}
    for tiers in (1, 2):
        batch = TieredBatch(engine.model, set(), engine.tokenizer.pad_token_id, "cpu", max_rows=4, tiers=tiers)
        done = batch.admit([live(engine, prompt, limit, i) for i, (prompt, limit) in enumerate(zip(prompts, limits))])
        widths = [(len(tier), tier.width) for tier in batch.tiers]
        while len(batch):
            done += batch.step()
        results[tiers] = {d.handle: d.tokens for d in done}
        assert batch.empty
    long_prompt = len(engine.prompt_ids(prompts[3]))
    assert widths == [(3, max(len(engine.prompt_ids(p)) for p in prompts[:3])), (1, long_prompt)]
    assert widths[0][1] * 4 < long_prompt
    assert batch.joint_steps == limits[3] - 1  # every step of the long row's (its first token is the prefill's)
    assert results[2] == results[1] and [len(results[2][i]) for i in range(4)] == limits
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([engine.prompt_ids(prompt)])
        with torch.inference_mode():
            alone = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=limits[i], eos_token_id=None,
                                          pad_token_id=engine.tokenizer.pad_token_id)
        assert results[2][i] == alone[0, ids.shape[1]:].tolist(), i


def spin(seconds: float) -> None:
    """Holds a core for `seconds` of this thread's CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def test_the_workers_share_on_a_core_counts_its_threads_cpu_time_not_its_waits(tiny_llama):
    """The job's engine computes slower than the bare one when other processes hold the cores (Ray's, on
    a 2-core machine): `on_cpu_share` tells that apart from doing more work."""
    generator = engine_of(tiny_llama)
    engine = generator.inner
    assert engine.on_cpu_share is None  # nothing computed yet
    engine._timed(time.sleep, 0.3)  # a sleeping thread holds no core, like one waiting for a core
    assert engine.worker_seconds >= 0.3 and engine.on_cpu_share < 0.2
    engine._timed(spin, 0.9)
    assert 0.7 < engine.on_cpu_share <= 1.0 and engine.worker_cpu_seconds >= 0.9
    generator = engine_of(tiny_llama)  # real work: prefill and decode steps on the worker thread
    answers(generator, PROMPTS[:3], [SamplingParams(0.0, 1.0, 8)] * 3)
    assert generator.inner.worker_cpu_seconds > 0 and 0.0 < generator.inner.on_cpu_share <= 1.0
