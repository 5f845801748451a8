"""The job-wide rate limiter: the token buckets on a simulated clock (no Ray), then the openai backend
through it against a fake endpoint with a hard limit."""
from __future__ import annotations

import asyncio
import time

import pytest

from generation.ratelimit import HEADROOM, Limiter, RateState, cooldown_seconds, parse_duration


def _grant_all(state: RateState, count: int, tokens: int = 1, used: int | None = None, start: float = 0.0) -> list:
    """Grant `count` requests as fast as the state allows on a simulated clock; each is settled
    with `used` tokens the moment it is granted. Returns the grant times."""
    now, times = start, []
    for _ in range(count):
        now += state.wait(tokens, now)
        state.take(tokens)
        if used is not None:
            state.settle(tokens, used, {}, now)
        times.append(now)
    return times


def _most_in_window(times: list[float], window: float) -> int:
    return max(sum(t0 <= t < t0 + window for t in times) for t0 in times)


def test_requests_are_granted_at_the_limit_less_headroom_and_never_more_than_the_limit_in_any_second():
    times = _grant_all(RateState(600, None, now=0.0), 1200)
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert rate == pytest.approx(600 * HEADROOM, rel=1e-6)
    assert _most_in_window(times, 1.0) <= 10 and _most_in_window(times, 60.0) <= 600
    assert times[0] > 0  # the bucket starts empty: no burst into a window the endpoint has counted


def test_tokens_given_back_by_usage_let_as_many_requests_through_as_the_tokens_they_really_use():
    # each request reserves 500 tokens (prompt + max_tokens) and uses 50: 60000 tokens/min = 1200 req/min
    reserved_only = _grant_all(RateState(None, 60000, now=0.0), 200, tokens=500)
    corrected = _grant_all(RateState(None, 60000, now=0.0), 200, tokens=500, used=50)
    per_minute = [(len(t) - 1) / (t[-1] - t[0]) * 60 for t in (reserved_only, corrected)]
    assert per_minute[0] == pytest.approx(60000 * HEADROOM / 500, rel=1e-6)
    assert per_minute[1] == pytest.approx(60000 * HEADROOM / 50, rel=0.02)


def test_the_endpoints_headers_lower_a_limit_never_raise_it_and_set_one_that_was_not_configured():
    state = RateState(600, None, now=0.0)
    state.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-limit-tokens": "1200"}, 0.0)
    assert state.limits == {"requests": 600, "tokens": 1200.0}
    state.observe({"x-ratelimit-limit-requests": "120"}, 0.0)
    times = _grant_all(state, 50)
    assert (len(times) - 1) / (times[-1] - times[0]) * 60 == pytest.approx(120 * HEADROOM, rel=1e-6)


def test_requests_are_paced_one_at_a_time_even_after_a_pause_so_no_burst_follows_it():
    state = RateState(600, None, now=0.0)
    times = _grant_all(state, 20, start=100.0)  # idle for 100 s first
    assert times[1] - times[0] == pytest.approx(60 / (600 * HEADROOM))


def test_remaining_from_the_endpoint_lowers_what_the_bucket_thinks_is_left():
    state = RateState(None, 6000, now=0.0)
    assert state.wait(100, 10.0) == 0  # 10 s idle: 950 tokens saved up
    state.observe({"x-ratelimit-remaining-tokens": "0"}, 10.0)  # another client used the key up
    assert state.wait(100, 10.0) == pytest.approx(100 / (6000 * HEADROOM / 60))


def test_a_429_pauses_every_request_for_retry_after_and_the_buckets_restart_empty():
    state = RateState(600, None, now=0.0)
    state.rejected({"retry-after-ms": "2500"}, 10.0)
    assert state.wait(1, 10.0) == pytest.approx(2.5)
    assert state.wait(1, 12.5) == pytest.approx(60 / (600 * HEADROOM))  # empty after the pause, not full
    assert state.stats()["rejected"] == 1


@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after-ms": "20"}, 0.02), ({"retry-after": "3"}, 3.0),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, 60.0),  # capped at a minute
    ({"x-ratelimit-reset-tokens": "250ms"}, 0.25), ({}, 1.0), ({"retry-after": "soon"}, 1.0)])
def test_cool_down_after_a_429_comes_from_its_headers(headers, seconds):
    assert cooldown_seconds(headers) == pytest.approx(seconds)


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5),
                                           ("0.5", 0.5), ("", None), ("soon", None), ("1s later", None)])
def test_reset_durations_in_openais_format(text, seconds):
    assert parse_duration(text) == seconds


def test_an_in_process_limiter_grants_concurrent_requests_in_order_at_its_rate():
    limiter, order = Limiter(1200, None), []

    async def one(i: int):
        await asyncio.sleep(i * 0.001)  # ask in order 0, 1, 2, ...
        await limiter.acquire(1)
        order.append((i, time.monotonic()))

    async def run():
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(12))), 30)

    start = time.monotonic()
    asyncio.run(run())
    assert [i for i, _ in order] == list(range(12))
    assert order[-1][1] - start >= 12 * 60 / (1200 * HEADROOM) - 0.05  # 12 grants at 19.4/s, from empty


KEY_ENV = "EVOLRAY_TEST_RATE_KEY"


def _achieved_per_minute(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) * 60


def test_evolve_pool_of_two_actors_keeps_one_request_limit_without_429s_after_the_first_window(
        tmp_path, local_ray, monkeypatch, capfd):
    from common.config import load_config
    from evol.config import EvolveConfig
    from evol.run import run_evolve
    from tests.openai_fakes import RateLimitedServer

    server = RateLimitedServer(requests_per_minute=600, window_s=5.0)
    monkeypatch.setenv(KEY_ENV, "k")
    cfg = load_config(EvolveConfig, "configs/tiny.yaml", [
        f"output.path={tmp_path / 'out'}", "seeds.limit=24", "output.buckets=12", "evolve.rounds=2",
        "generation.backend=openai",
        "generation.model=fake-model", f"generation.openai.base_url={server.url}",
        f"generation.openai.api_key_env={KEY_ENV}", "generation.openai.requests_per_minute=600",
        "generation.concurrency=[2,2]", "generation.num_cpus=0.5", "generation.max_chains=4"])
    try:
        summary = run_evolve(cfg)
    finally:
        server.close()
    times = [t for t, _ in server.admitted]
    assert summary["errors"] == 0 and summary["requests"] == len(times) >= 140
    assert len(summary["seeds_per_actor"]) == 2  # both actors sent requests through the one limiter
    assert [t for t in server.rejected if t > times[0] + server.window_s] == []
    assert 0.9 * 600 <= _achieved_per_minute(times) <= 600
    out, _ = capfd.readouterr()
    assert f"rate limit 600 requests/min: {len(times) + len(server.rejected)} requests granted" in out


def test_two_generators_share_one_token_limit_given_back_by_usage(local_ray, monkeypatch):
    """Two generators (as two actors would) reserve prompt + 256 tokens per request and use ~25: the
    shared bucket lets through the tokens really used, not the reservations."""
    from generation import GenerationConfig, SamplingParams, build_generator
    from tests.openai_fakes import RateLimitedServer

    server = RateLimitedServer(requests_per_minute=100_000, tokens_per_minute=30_000, window_s=5.0)
    monkeypatch.setenv(KEY_ENV, "k")
    cfg = GenerationConfig(backend="openai", model="fake-model", openai={
        "base_url": server.url, "api_key_env": KEY_ENV, "tokens_per_minute": 30_000})
    generators = [build_generator(cfg), build_generator(cfg)]

    async def run():
        return await asyncio.gather(*(generators[i % 2].generate(f"Question number {i}: " * 3, SamplingParams(1.0, 1.0, 256))
                                      for i in range(240)))

    try:
        gens = asyncio.run(run())
    finally:
        server.close()
    times, tokens = [t for t, _ in server.admitted], [n for _, n in server.admitted]
    assert len(times) == 240 and sum(g.prompt_tokens + g.completion_tokens for g in gens) == sum(tokens)
    assert [t for t in server.rejected if t > times[0] + server.window_s] == []
    achieved = sum(tokens[1:]) / (times[-1] - times[0]) * 60
    assert 0.9 * 30_000 <= achieved <= 30_000
    stats = generators[0].inner.limiter.stats()
    assert stats["granted"] == 240 + len(server.rejected) and stats["used_tokens"] == sum(tokens)


def test_a_limit_set_too_high_follows_the_endpoints_headers_after_the_first_window(monkeypatch):
    """requests_per_minute 6000 against an endpoint that allows 600 and says so in its headers."""
    from generation import GenerationConfig, SamplingParams, build_generator
    from tests.openai_fakes import RateLimitedServer

    server = RateLimitedServer(requests_per_minute=600, window_s=2.0)
    monkeypatch.setenv(KEY_ENV, "k")
    cfg = GenerationConfig(backend="openai", model="fake-model", openai={
        "base_url": server.url, "api_key_env": KEY_ENV, "requests_per_minute": 6000})
    generator = build_generator(cfg)

    async def run():
        return await asyncio.gather(*(generator.generate(f"Question {i}", SamplingParams(1.0, 1.0, 8))
                                      for i in range(90)))

    try:
        asyncio.run(run())
    finally:
        server.close()
    times = [t for t, _ in server.admitted]
    settled = [t for t in times if t > times[0] + server.window_s]  # after the cool-down of the first window
    assert len(times) == 90 and [t for t in server.rejected if t > times[0] + server.window_s] == []
    assert 0.9 * 600 <= _achieved_per_minute(settled) <= 600
    assert generator.inner.limiter.stats()["limits_per_minute"]["requests"] == 600
