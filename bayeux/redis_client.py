"""How every Redis user of a server (the engine, the application's stores) opens its client."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import MaxConnectionsError

MAX_CONNECTIONS = 64
"""Per client. Redis runs one command at a time, so more connections add no throughput."""


def open_redis(
    url: str, max_connections: int = MAX_CONNECTIONS, wait: float = 5.0
) -> aioredis.Redis:
    """A client whose pool waits up to `wait` seconds for a free connection when all are busy.

    redis-py's plain pool raises `MaxConnectionsError` at once instead, which a burst of
    concurrent requests (a thousand chats on one node) reaches; its blocking pool waits, but
    takes a lock and arms a timeout for every command, free connection or not (40 µs of the
    ~90 µs a command costs). This pool takes a free connection as cheaply as the plain one and
    waits only when there is none; a wait that runs out raises a `RedisError` callers handle.

    No per-command socket timeout: redis-py would arm two asyncio timeouts per command (the
    write and the read), about a tenth of a chat node's CPU (load/README.md). A Redis that
    stops answering without closing its connections is caught instead by the engine's
    heartbeat (which has its own deadline and turns the node unhealthy), by TCP keepalive,
    and by this pool: once its connections hang, further commands fail after `wait`."""
    pool = _WaitingPool.from_url(
        url,
        max_connections=max_connections,
        wait=wait,
        socket_connect_timeout=2,
        socket_timeout=None,
        socket_keepalive=True,
        health_check_interval=0,
    )
    return aioredis.Redis.from_pool(pool)


class _WaitingPool(aioredis.ConnectionPool):
    """redis-py's plain pool, but a command finding every connection in use waits for one."""

    def __init__(self, *, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wait = wait
        self._returned = asyncio.Event()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            try:
                return await super().get_connection(*args, **kwargs)
            except MaxConnectionsError:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                self._returned.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._returned.wait()

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)
        self._returned.set()
