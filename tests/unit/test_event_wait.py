"""wait_until: woken by its event, bounded by its deadline."""

from __future__ import annotations

import asyncio

from nethical_grpc.event_wait import wait_until


async def test_returns_once_the_condition_holds_after_a_wake() -> None:
    wake, state = asyncio.Event(), {"ready": False}
    loop = asyncio.get_running_loop()

    def make_ready() -> None:
        state["ready"] = True
        wake.set()

    loop.call_later(0.05, wake.set)  # a wake with the condition still false: waits on
    loop.call_later(0.1, make_ready)
    started = loop.time()
    assert await wait_until(lambda: state["ready"], wake, started + 5.0)
    assert 0.09 <= loop.time() - started < 2.0


async def test_gives_up_at_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await wait_until(lambda: False, asyncio.Event(), started + 0.1)
    assert 0.09 <= loop.time() - started < 2.0
    assert await wait_until(lambda: True, asyncio.Event(), started - 1.0)  # holds: no wait
