"""Waiting on an asyncio event for a condition, under a deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


async def wait_until(condition: Callable[[], bool], wake: asyncio.Event, deadline: float) -> bool:
    """Wait until ``condition()`` holds, looking again each time ``wake`` is set, or until
    the running loop's clock reaches ``deadline`` (``loop.time()``). Whether it holds.

    Cancelling the caller cancels the wait, also when ``wake`` is set in the same turn of
    the loop (``asyncio.wait_for`` of Python 3.11 then returned instead, and the
    cancellation was lost).
    """
    loop = asyncio.get_running_loop()
    while not condition():
        if deadline - loop.time() <= 0:
            return False
        wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await wake.wait()
    return True
