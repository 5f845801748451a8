"""One rate limit for a whole job: requests and tokens per minute on one endpoint, shared by every
actor that calls it.

A paid endpoint limits the requests and tokens of an API key per minute, whatever the number of
clients; a per-actor `max_in_flight` cannot keep a pool of actors under it. So every request of
the job takes its turn from one token bucket per limit (`RateState`, pure, the clock passed in),
held by one small Ray actor that every generator of the job finds by name (`shared_limiter`).

- A request reserves 1 request and `prompt tokens + max_tokens` tokens before it is sent; the
  tokens it did not use (the endpoint's `usage`) are given back when it ends (`settle`).
- The endpoint's `x-ratelimit-limit-*` headers lower the configured rates (never raise them), and
  its `x-ratelimit-remaining-*` lower what the bucket thinks is left (another client may share the
  key).
- A 429 pauses every request of the job (`retry-after`, else the reset header, else 1 s) and empties
  the buckets.
- The buckets start empty and run HEADROOM below the limit; requests are paced one at a time
  (endpoints may count them per second), the tokens bucket holds a minute (room for the
  reservations in flight, as the endpoint's own per-minute bucket has).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass

HEADROOM = 0.95  # share of the limit aimed at: a sender held up for a moment must not push a window over it
# What a bucket can save up. Requests are paced one at a time: an endpoint may count them per second
# or over a short window, and a limiter held up for a moment must not catch up in a burst. Tokens hold
# a minute: room for the reservations in flight (prompt + max_tokens each, mostly given back), as the
# endpoint's own per-minute bucket has.
CAPACITY = {"requests": lambda rate: 1.0, "tokens": lambda rate: rate * 60.0}
DEFAULT_COOLDOWN_S = 1.0  # a 429 without retry-after or reset headers pauses this long
MAX_COOLDOWN_S = 60.0
KINDS = ("requests", "tokens")


@dataclass
class Bucket:
    """`rate` units per second, at most `capacity` saved up. A grant needs the cost (or a full
    bucket, for a cost above capacity) and may leave the level below zero: a debt later grants wait for."""

    rate: float
    capacity: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, kind: str, limit: float, now: float) -> Bucket:
        rate = limit * HEADROOM / 60.0
        return cls(rate, CAPACITY[kind](rate), 0.0, now)  # empty: the endpoint may have counted others just now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be granted (0: now)."""
        self.refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


def parse_duration(text: str | None) -> float | None:
    """Seconds of a reset header: '1s', '6m0s', '20ms', '1h2m3.5s' or a bare number; None if unreadable."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _number(headers: dict, name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, TypeError, ValueError):
        return None


def cooldown_seconds(headers: dict) -> float:
    """How long a 429 pauses the job: retry-after-ms, retry-after, the later reset, else the default."""
    if (ms := _number(headers, "retry-after-ms")) is not None:
        seconds = ms / 1000.0
    elif (after := _number(headers, "retry-after")) is not None:
        seconds = after
    else:
        resets = [parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) for kind in KINDS]
        seconds = max([r for r in resets if r is not None], default=DEFAULT_COOLDOWN_S)
    return min(max(seconds, 0.0), MAX_COOLDOWN_S)


class RateState:
    """Both buckets of one endpoint, what the endpoint said about them, and counts for the summary."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None, now: float):
        self.limits = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self.buckets = {kind: Bucket.per_minute(kind, limit, now) if limit else None for kind, limit in self.limits.items()}
        self.paused_until = now
        self.counts: Counter = Counter()

    def wait(self, tokens: int, now: float) -> float:
        costs = {"requests": 1, "tokens": tokens}
        waits = [bucket.wait(costs[kind], now) for kind, bucket in self.buckets.items() if bucket is not None]
        return max([self.paused_until - now, *waits, 0.0])

    def take(self, tokens: int) -> None:
        for kind, cost in (("requests", 1), ("tokens", tokens)):
            if self.buckets[kind] is not None:
                self.buckets[kind].level -= cost
        self.counts["granted"] += 1
        self.counts["reserved_tokens"] += tokens

    def settle(self, reserved: int, used: int, headers: dict, now: float) -> None:
        """A request ended: give back the tokens it reserved and did not use, and read the headers."""
        bucket = self.buckets["tokens"]
        if bucket is not None:
            bucket.refill(now)
            bucket.level = min(bucket.capacity, bucket.level + reserved - used)
        self.counts["used_tokens"] += used
        self.observe(headers, now)

    def observe(self, headers: dict, now: float) -> None:
        """Lower a rate to the endpoint's stated limit, and the level to what it says remains."""
        for kind in KINDS:
            limit = _number(headers, f"x-ratelimit-limit-{kind}")
            if limit and limit > 0 and (self.limits[kind] is None or limit < self.limits[kind]):
                self.limits[kind] = limit
                old, self.buckets[kind] = self.buckets[kind], Bucket.per_minute(kind, limit, now)
                if old is not None:
                    old.refill(now)
                    self.buckets[kind].level = min(old.level, self.buckets[kind].capacity)
                self.counts[f"limit_from_headers_{kind}"] = int(limit)
            remaining, bucket = _number(headers, f"x-ratelimit-remaining-{kind}"), self.buckets[kind]
            if remaining is not None and bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)

    def rejected(self, headers: dict, now: float) -> None:
        """A 429: pause every request for the cool-down and start the buckets empty after it."""
        self.counts["rejected"] += 1
        self.observe(headers, now)
        self.paused_until = max(self.paused_until, now + cooldown_seconds(headers))
        for bucket in self.buckets.values():
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, 0.0)
                bucket.updated = max(bucket.updated, self.paused_until)

    def stats(self) -> dict:
        return {"limits_per_minute": dict(self.limits), **dict(self.counts)}


class Limiter:
    """The buckets of one endpoint behind an asyncio lock: requests are granted in the order they
    asked (asyncio.Lock wakes its waiters first come, first served); the one at the head wakes
    when its wait is over or when something changed (tokens given back, a pause). Runs in the
    job's limiter actor (or in-process without Ray); every method runs on one event loop."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.state = RateState(requests_per_minute, tokens_per_minute, time.monotonic())
        self._turn: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None

    async def acquire(self, tokens: int) -> None:
        if self._turn is None:
            self._turn, self._changed = asyncio.Lock(), asyncio.Event()
        async with self._turn:
            while (wait := self.state.wait(tokens, time.monotonic())) > 0:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), wait)
                except TimeoutError:
                    pass
            self.state.take(tokens)

    def settle(self, reserved: int, used: int, headers: dict) -> None:
        self.state.settle(reserved, used, headers, time.monotonic())
        self._wake()

    def rejected(self, headers: dict) -> None:
        self.state.rejected(headers, time.monotonic())
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def stats(self) -> dict:
        return self.state.stats()


class LimiterActor(Limiter):
    """The Ray actor: async methods, so that they run on the event loop where `acquire` waits."""

    async def settle(self, reserved: int, used: int, headers: dict) -> None:
        super().settle(reserved, used, headers)

    async def rejected(self, headers: dict) -> None:
        super().rejected(headers)

    async def stats(self) -> dict:
        return super().stats()


class RemoteLimiter:
    """The job's limiter actor seen from a generator: the same calls; settling is not awaited."""

    def __init__(self, handle):
        self.handle = handle

    async def acquire(self, tokens: int) -> None:
        await self.handle.acquire.remote(tokens)

    def settle(self, reserved: int, used: int, headers: dict) -> None:
        self.handle.settle.remote(reserved, used, headers)

    def rejected(self, headers: dict) -> None:
        self.handle.rejected.remote(headers)

    def stats(self) -> dict:
        import ray

        return ray.get(self.handle.stats.remote())


def limiter_name(gen) -> str:
    """One limiter per endpoint, model, key and limits: what an endpoint's rate limit applies to."""
    o = gen.openai
    parts = [o.base_url, gen.model, o.api_key_env, o.requests_per_minute, o.tokens_per_minute]
    return f"evolray-ratelimit-{hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).hexdigest()}"


def shared_limiter(gen) -> Limiter | RemoteLimiter | None:
    """The job-wide limiter of an openai GenerationConfig `gen`, or None when it sets no limit.

    Under Ray: the named actor of this job's namespace, started by whoever asks first (call this on
    the driver before the pools start, so that the driver owns it for the whole job); without Ray:
    one in this process."""
    rpm, tpm = gen.openai.requests_per_minute, gen.openai.tokens_per_minute
    if rpm is None and tpm is None:
        return None
    import ray

    if not ray.is_initialized():
        return Limiter(rpm, tpm)
    actor = ray.remote(num_cpus=0, max_concurrency=10_000)(LimiterActor)
    return RemoteLimiter(actor.options(name=limiter_name(gen), get_if_exists=True, max_restarts=-1).remote(rpm, tpm))


_DRIVER_LIMITERS: dict[str, RemoteLimiter | Limiter] = {}  # held for the driver's life: a dropped handle ends the actor


def share_rate_limits(*gens) -> list:
    """On the driver, before the pools start: the limiters of the openai roles among `gens` (None
    entries are skipped), so that the driver owns them, and holds them, for the whole job."""
    import ray

    found = []
    for gen in gens:
        if gen is not None and gen.backend == "openai" and (limiter := shared_limiter(gen)) is not None:
            job = ray.get_runtime_context().get_job_id() if ray.is_initialized() else "local"
            found.append(_DRIVER_LIMITERS.setdefault(f"{job}:{limiter_name(gen)}", limiter))
    return found


def format_rate_limits(limiters: list) -> list[str]:
    """One line per limiter for the job's log: limits in force, requests granted, 429s seen."""
    lines = []
    for limiter in limiters:
        stats = limiter.stats()
        limits = ", ".join(f"{n:g} {kind}/min" for kind, n in stats["limits_per_minute"].items() if n)
        lines.append(f"rate limit {limits}: {stats.get('granted', 0)} requests granted, "
                     f"{stats.get('rejected', 0)} rejected by the endpoint (429)")
    return lines
