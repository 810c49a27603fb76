"""The Redis routing store: one routing shared by every node of a cluster.

Each routing record is one string key, `<prefix>:routing:<name>` (JSON). An update WATCHes
its keys, reads them, lets the router change them and writes the changed ones in MULTI/EXEC;
if another node wrote one of them meanwhile, EXEC fails and the update runs again on fresh
records. Updates touch two or three small keys (a chat, an agent, a queue), so conflicts are
rare and short.

This module is the only place that knows the routing store's Redis key names.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
from collections.abc import Callable
from typing import TypeVar

import orjson
from redis import asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from bayeux.redis_client import open_redis

from .routing_store import Records, RoutingStore
from .store import StoreUnavailable, redis_failures

T = TypeVar("T")
MAX_ATTEMPTS = 50
RETRY_BACKOFF_S = 0.002
"""First pause after a conflict; it doubles (with jitter) up to 50 ms."""


class RedisRoutingStore(RoutingStore):
    def __init__(self, url: str, prefix: str = "gms") -> None:
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis = open_redis(url)

    def key(self, name: str) -> str:
        return f"{self.prefix}:routing:{name}"

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def read(self, names: list[str]) -> Records:
        if not names:
            return {}
        with redis_failures():
            values = await self._redis.mget([self.key(name) for name in names])
        return _decode(names, values)

    async def update(self, names: list[str], change: Callable[[Records], T]) -> T:
        keys = [self.key(name) for name in names]
        backoff = RETRY_BACKOFF_S
        for _ in range(MAX_ATTEMPTS):
            try:
                with redis_failures():
                    return await self._update_once(names, keys, change)
            except WatchError:
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, 0.05)
        raise StoreUnavailable("routing records are changing too fast; retry")

    async def _update_once(
        self, names: list[str], keys: list[str], change: Callable[[Records], T]
    ) -> T:
        """One attempt of `update`; WatchError when a key changed meanwhile."""
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(*keys)
            before = _decode(names, await pipe.mget(keys))
            records = copy.deepcopy(before)
            result = change(records)
            pipe.multi()
            for name, key in zip(names, keys, strict=True):
                record = records[name]
                if record == before[name]:
                    continue
                if record is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, orjson.dumps(record))
            await pipe.execute()
            return result


def _decode(names: list[str], values: list[bytes | str | None]) -> Records:
    return {
        name: orjson.loads(value) if value is not None else None
        for name, value in zip(names, values, strict=True)
    }
