"""The hf backend batches requests of every chain in flight: a whole batch of one kind (sampling
and max_tokens) runs alone; otherwise the same temperature/top_p share a generate() call whatever
their max_tokens, and each answer is cut to its own limit."""
import asyncio

from generation import GenerationConfig, SamplingParams, build_generator


def test_requests_of_one_temperature_share_a_batch_and_keep_their_own_limits(tiny_llama):
    generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", torch_threads=1,
                                                 batch_size=4, batch_wait_ms=20))
    engine = generator.inner
    calls = []
    original = engine._generate_batch
    engine._generate_batch = lambda prompts, samplings: calls.append(
        sorted(s.max_tokens for s in samplings)) or original(prompts, samplings)
    evolve, respond, judge = SamplingParams(1.0, 0.95, 5), SamplingParams(1.0, 0.95, 9), SamplingParams(0.0, 1.0, 3)
    kinds = [evolve, respond, judge, evolve, respond]

    async def run():
        return await asyncio.gather(*(generator.generate(f"question {i}", s) for i, s in enumerate(kinds)))

    answers = asyncio.run(run())
    # the four T=1 requests (two limits) in one call, the greedy one in another: the largest group first
    assert calls == [[5, 5, 9, 9], [3]]
    for answer, sampling in zip(answers, kinds):
        assert 0 < answer.completion_tokens <= sampling.max_tokens
    # an answer cut by the shared call's larger limit is cut again to its own, and says so
    assert [a.completion_tokens for a in answers if not a.finished] == [
        s.max_tokens for a, s in zip(answers, kinds) if not a.finished]


def test_a_whole_batch_of_one_kind_runs_alone(tiny_llama):
    generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", torch_threads=1,
                                                 batch_size=2, batch_wait_ms=20))
    engine = generator.inner
    calls = []
    original = engine._generate_batch
    engine._generate_batch = lambda prompts, samplings: calls.append(
        [s.max_tokens for s in samplings]) or original(prompts, samplings)
    evolve, respond, judge = SamplingParams(1.0, 0.95, 5), SamplingParams(1.0, 0.95, 9), SamplingParams(0.0, 1.0, 3)
    kinds = [respond, evolve, judge, evolve]

    async def run():
        return await asyncio.gather(*(generator.generate(f"question {i}", s) for i, s in enumerate(kinds)))

    asyncio.run(run())
    # the two evolve requests fill a batch: they run without the respond request's longer limit
    assert calls == [[5, 5], [9], [3]]
