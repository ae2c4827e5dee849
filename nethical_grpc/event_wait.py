"""Waiting on an asyncio event for a condition, under a deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


async def wait_until(condition: Callable[[], bool], wake: asyncio.Event, deadline: float) -> bool:
    """Wait until ``condition()`` holds, looking again each time ``wake`` is set, or until
    the running loop's clock reaches ``deadline`` (``loop.time()``). Whether it holds."""
    loop = asyncio.get_running_loop()
    while not condition():
        left = deadline - loop.time()
        if left <= 0:
            return False
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), left)
    return True
