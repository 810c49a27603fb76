"""The shared Redis client factory: a burst of commands beyond the pool waits, never fails."""

from __future__ import annotations

import asyncio

import pytest
from redis import asyncio as aioredis
from redis.exceptions import MaxConnectionsError

from bayeux.redis_client import open_redis
from tests.support.redis_server import RedisServer


async def burst(client: aioredis.Redis, size: int) -> list[object]:
    """`size` commands in flight at once, each holding a connection for a moment."""
    return await asyncio.gather(*(client.blpop(["absent"], timeout=0.05) for _ in range(size)))


async def test_a_burst_beyond_the_pool_waits_for_connections(redis_server: RedisServer) -> None:
    client = open_redis(redis_server.url, max_connections=3)
    try:
        assert await burst(client, 30) == [None] * 30
    finally:
        await client.aclose()


async def test_redis_pys_default_pool_would_have_failed_the_same_burst(
    redis_server: RedisServer,
) -> None:
    """Why the factory exists (redis-py's plain pool raises at its limit)."""
    client = aioredis.from_url(redis_server.url, max_connections=3)
    try:
        with pytest.raises(MaxConnectionsError):
            await burst(client, 30)
    finally:
        await client.aclose()


async def test_a_wait_for_a_connection_is_bounded(redis_server: RedisServer) -> None:
    """A Redis that holds every connection (here: one slow command) fails the next command
    after `wait`, instead of queueing it for ever."""
    client = open_redis(redis_server.url, max_connections=1, wait=0.1)
    try:
        slow = asyncio.ensure_future(client.blpop(["absent"], timeout=0.5))
        await asyncio.sleep(0.02)
        with pytest.raises(MaxConnectionsError):
            await client.get("k")
        assert await slow is None
        assert await client.get("k") is None  # the connection came back
    finally:
        await client.aclose()
