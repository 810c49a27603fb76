"""Closing test resources without ever hanging the suite."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

import pytest


async def close_all(closers: list[Callable[[], Awaitable[None]]], limit: float = 10) -> None:
    """Close everything, and fail (showing what every task is waiting on) rather than hang."""
    try:
        async with asyncio.timeout(limit):
            for close in closers:
                await close()
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        pytest.fail(f"closing took over {limit} s:\n{stacks.getvalue()}")
