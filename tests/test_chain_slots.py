"""The actor's chain gauge (evol.actor.ChainSlots), without Ray: the mean over the whole span and the peak."""
from __future__ import annotations

import asyncio

import pytest

from evol.actor import ChainSlots


def _run(slots: ChainSlots, seconds: list[float]) -> None:
    async def chain(duration):
        async with slots.slot():
            await asyncio.sleep(duration)

    async def main():
        await asyncio.gather(*(chain(d) for d in seconds))

    asyncio.run(main())


def test_chains_that_all_start_at_once_count_fully_not_as_their_ramp_up():
    slots = ChainSlots(16)
    _run(slots, [0.3] * 12)
    assert slots.peak == 12 and slots.mean() == pytest.approx(12, rel=0.05)  # read ~6 when averaged to the last start


def test_the_drain_and_the_slot_limit_lower_the_mean_and_the_peak_stays_at_the_limit():
    slots = ChainSlots(2)
    _run(slots, [0.2, 0.2, 0.2, 0.6])  # 2 in flight for 0.4 s, then the long one alone for 0.4 s
    assert slots.peak == 2 and slots.mean() == pytest.approx((2 * 0.4 + 1 * 0.4) / 0.8, rel=0.1)
