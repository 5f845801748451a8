"""The hf backend's static batching (`generation.batching: static`) batches requests of every chain in
flight: a whole batch of one kind (sampling and max_tokens) runs alone; otherwise the same
temperature/top_p share a generate() call whatever their max_tokens, and each answer is cut to its
own limit. Continuous batching (the default): tests/test_hf_continuous.py."""
import asyncio

from generation import GenerationConfig, SamplingParams, build_generator

EVOLVE, RESPOND, JUDGE = SamplingParams(1.0, 0.95, 5), SamplingParams(1.0, 0.95, 9), SamplingParams(0.0, 1.0, 3)


def generate_logging_batches(model: str, batch_size: int, kinds: list[SamplingParams]) -> tuple[list, list, object]:
    """Every request at once; returns the answers and each generate() call's max_tokens, in order."""
    generator = build_generator(GenerationConfig(model=model, dtype="float32", torch_threads=1,
                                                 batch_size=batch_size, batch_wait_ms=20, batching="static"))
    engine, calls = generator.inner, []
    original = engine._generate_batch
    engine._generate_batch = lambda prompts, samplings: calls.append(
        [s.max_tokens for s in samplings]) or original(prompts, samplings)

    async def run():
        return await asyncio.gather(*(generator.generate(f"question {i}", s) for i, s in enumerate(kinds)))

    return asyncio.run(run()), calls, engine


def test_requests_of_one_temperature_share_a_batch_and_keep_their_own_limits(tiny_llama):
    kinds = [EVOLVE, RESPOND, JUDGE, EVOLVE, RESPOND]
    answers, calls, engine = generate_logging_batches(tiny_llama, 4, kinds)
    # rows per generate() are counted for the actor's summary: the engine's fill
    assert (engine.batches, engine.batched_rows, engine.mean_batch_rows) == (2, 5, 2.5)
    # the four T=1 requests (two limits) in one call, the greedy one in another: the largest group first
    assert [sorted(call) for call in calls] == [[5, 5, 9, 9], [3]]
    for answer, sampling in zip(answers, kinds):
        assert 0 < answer.completion_tokens <= sampling.max_tokens
    # an answer cut by the shared call's larger limit is cut again to its own, and says so
    assert [a.completion_tokens for a in answers if not a.finished] == [
        s.max_tokens for a, s in zip(answers, kinds) if not a.finished]


def test_a_whole_batch_of_one_kind_runs_alone(tiny_llama):
    _, calls, _ = generate_logging_batches(tiny_llama, 2, [RESPOND, EVOLVE, JUDGE, EVOLVE])
    # the two evolve requests fill a batch: they run without the respond request's longer limit
    assert calls == [[5, 5], [9], [3]]


def test_a_batch_takes_the_oldest_request_and_the_prompts_closest_to_it_in_length(tiny_llama):
    """A batch is padded to its longest prompt: short answer prompts and long rewrite prompts go in
    batches of their own, and the oldest request is always in the next batch."""
    generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", torch_threads=1,
                                                 batch_size=2, batch_wait_ms=20, batching="static"))
    engine, calls = generator.inner, []
    original = engine._generate_batch
    engine._generate_batch = lambda prompts, samplings: calls.append(sorted(len(row.prompt) for row in prompts)) or original(prompts, samplings)
    short, long = "word", "word " * 60
    prompts = [long, short, long, short, long]  # all of one kind; the oldest is long

    async def run():
        return await asyncio.gather(*(generator.generate(p, EVOLVE) for p in prompts))

    asyncio.run(run())
    lengths = [engine.prompt_ids(p) for p in (short, long)]
    short_ids, long_ids = (len(ids) for ids in lengths)
    assert calls == [[long_ids, long_ids], [short_ids, short_ids], [long_ids]]


def test_a_row_of_a_mixed_batch_is_done_at_its_own_limit():
    import torch

    from generation.hf import StopRows

    stop = StopRows(prompt_length=4, limits=[5, 9], eos_ids={2})
    assert stop(torch.zeros(2, 4 + 4, dtype=torch.long), None).tolist() == [False, False]
    assert stop(torch.zeros(2, 4 + 5, dtype=torch.long), None).tolist() == [True, False]
    assert stop(torch.zeros(2, 4 + 9, dtype=torch.long), None).tolist() == [True, True]
    assert stop.released_rows() == [False, False]


def test_a_batch_stops_once_half_its_rows_are_done_while_a_request_waits():
    import torch

    from generation.hf import StopRows

    waiting = [0]
    stop = StopRows(prompt_length=1, limits=[9, 9, 9, 9], eos_ids={2}, waiting=lambda: waiting[0])
    step = torch.tensor([[7, 2], [7, 5], [7, 5], [7, 5]])  # row 0 ended with its EOS
    assert stop(step, None).tolist() == [True, False, False, False]
    step = torch.cat([step, torch.tensor([[0], [2], [5], [5]])], dim=1)  # row 1 too: half are done
    assert stop(step, None).tolist() == [True, True, False, False]  # nobody waits: the batch goes on
    waiting[0] = 1
    assert stop(step, None).tolist() == [True] * 4  # somebody waits: the whole batch stops
    assert stop.released_rows() == [False, False, True, True]  # the two rows that go on later


def test_rows_still_generating_go_on_in_the_next_batch_with_a_waiting_request(tiny_llama):
    """Once half of a batch is done and a request of the same sampling waits, the rest of the batch
    goes back to the queue with what it generated and continues with the waiting request: greedy, its
    answer is the one it gets alone."""
    short, long, other = SamplingParams(0.0, 1.0, 3), SamplingParams(0.0, 1.0, 12), SamplingParams(0.0, 1.0, 6)
    generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", torch_threads=1,
                                                 batch_size=2, batch_wait_ms=20, batching="static"))
    engine, calls = generator.inner, []
    original = engine._generate_batch
    engine._generate_batch = lambda rows, samplings: calls.append(
        [(s.max_tokens, len(r.generated)) for r, s in zip(rows, samplings)]) or original(rows, samplings)

    async def together():
        return await asyncio.gather(*(generator.generate(f"question {i}", s)
                                      for i, s in enumerate([short, long, other])))

    answers = asyncio.run(together())
    alone = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", torch_threads=1, batch_size=1))
    by_itself = asyncio.run(alone.generate("question 1", long))
    assert [a.completion_tokens for a in answers] == [3, 12, 6]  # nobody's answer is cut short or lost
    # the first batch stopped when the 3-token answer was done: the 12-token one went on (3 made) with the 6
    assert calls == [[(3, 0), (12, 0)], [(12, 3), (6, 0)]]
    assert engine.released_rows == 1
    assert answers[1].text == by_itself.text and answers[1].prompt_tokens == by_itself.prompt_tokens


def test_a_seeded_request_draws_the_same_answer_again(tiny_llama):
    """A redone request at T=1 with the same sampling seed gets the same text (one batch of its own)."""
    generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", torch_threads=1, batch_size=1))
    seeded = SamplingParams(1.0, 1.0, 12, seed=1234)

    async def run():  # one event loop: the engine's batcher lives in it
        texts = [(await generator.generate("question", sampling)).text
                 for sampling in [seeded] * 3 + [SamplingParams(1.0, 1.0, 12)] * 3]
        return texts[:3], texts[3:]

    seeded_texts, unseeded_texts = asyncio.run(run())
    assert len(set(seeded_texts)) == 1
    assert len(set(unseeded_texts)) > 1  # unseeded: fresh draws
