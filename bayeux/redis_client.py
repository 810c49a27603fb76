"""How every Redis user of a server (the engine, the application's stores) opens its client."""

from __future__ import annotations

from redis import asyncio as aioredis

MAX_CONNECTIONS = 64
"""Per client. Redis runs one command at a time, so more connections add no throughput."""


def open_redis(
    url: str, max_connections: int = MAX_CONNECTIONS, wait: float = 5.0
) -> aioredis.Redis:
    """A client whose pool waits up to `wait` seconds for a free connection when all are busy.

    redis-py's default pool raises `MaxConnectionsError` at once instead, which a burst of
    concurrent requests (a thousand chats on one node) reaches; waiting lets commands queue
    for a moment, and a wait that runs out raises a `RedisError` callers already handle.

    No per-command socket timeout: redis-py would arm two asyncio timeouts per command (the
    write and the read), about a tenth of a chat node's CPU (load/README.md). A Redis that
    stops answering without closing its connections is caught instead by the engine's
    heartbeat (which has its own deadline and turns the node unhealthy), by TCP keepalive,
    and by this pool: once its connections hang, further commands fail after `wait`."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait,
        socket_connect_timeout=2,
        socket_timeout=None,
        socket_keepalive=True,
        health_check_interval=0,
    )
    return aioredis.Redis.from_pool(pool)
