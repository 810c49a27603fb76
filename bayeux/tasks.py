"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("bayeux")


async def cancel_and_wait(task: asyncio.Task[None], poll: float = 0.1) -> None:
    """Cancel a task and wait for it to end, cancelling again until it does.

    A cancellation that lands inside a redis-py call can be swallowed by the client library
    (seen with redis-py 8.1 on Python 3.11); a task that loops would then run for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=poll)
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s ended with an error", task.get_name(), exc_info=task.exception())
