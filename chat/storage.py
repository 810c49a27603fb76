"""Storage areas for the GMS Storage API: key/value maps (strings or files) that expire.

Memory for one process; Redis (one hash per area, native expiry) for many.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import orjson

from bayeux.redis_client import open_redis

from .store import redis_failures


@dataclass
class StoredFile:
    content: bytes
    content_type: str
    filename: str


Value = str | StoredFile


@dataclass
class StorageArea:
    id: str
    owner: str | None
    values: dict[str, Value] = field(default_factory=dict)


class StorageBackend(ABC):
    async def close(self) -> None:
        return None

    @abstractmethod
    async def put(
        self, area_id: str, owner: str | None, ttl_s: int, values: dict[str, Value], merge: bool
    ) -> None:
        """Write values (merged into the area, or replacing it) and reset its expiry."""

    @abstractmethod
    async def get(self, area_id: str) -> StorageArea | None: ...

    @abstractmethod
    async def delete(self, area_id: str) -> bool: ...

    @abstractmethod
    async def set_if_absent(self, area_id: str, name: str, value: str) -> bool:
        """Set one string value only if the area exists and has no value of that name, as
        one atomic step (a claim that exactly one of several concurrent callers wins); the
        expiry is left as it is. False when the value was there or the area is gone."""

    @abstractmethod
    async def remove_value(self, area_id: str, name: str) -> None:
        """Remove one value (giving a claim back); the expiry is left as it is."""


class MemoryStorage(StorageBackend):
    """Expired areas vanish on access, and are swept whenever areas are written."""

    def __init__(self) -> None:
        self._areas: dict[str, tuple[float, StorageArea]] = {}

    async def put(
        self, area_id: str, owner: str | None, ttl_s: int, values: dict[str, Value], merge: bool
    ) -> None:
        self._sweep()
        current = self._live(area_id)
        area = current if current is not None and merge else StorageArea(area_id, owner)
        area.values.update(values)
        self._areas[area_id] = (time.monotonic() + ttl_s, area)

    async def get(self, area_id: str) -> StorageArea | None:
        return self._live(area_id)

    async def delete(self, area_id: str) -> bool:
        return self._live(area_id) is not None and self._areas.pop(area_id, None) is not None

    async def set_if_absent(self, area_id: str, name: str, value: str) -> bool:
        # No await between the test and the set: atomic under the event loop.
        area = self._live(area_id)
        if area is None or name in area.values:
            return False
        area.values[name] = value
        return True

    async def remove_value(self, area_id: str, name: str) -> None:
        area = self._live(area_id)
        if area is not None:
            area.values.pop(name, None)

    def _live(self, area_id: str) -> StorageArea | None:
        entry = self._areas.get(area_id)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._areas[area_id]
            return None
        return entry[1]

    def _sweep(self) -> None:
        now = time.monotonic()
        for area_id in [k for k, (expires, _) in self._areas.items() if expires <= now]:
            del self._areas[area_id]


class RedisStorage(StorageBackend):
    """One hash per area: `s:<key>` strings, `f:<key>` files (metadata + bytes), `owner`."""

    def __init__(self, url: str, prefix: str = "gms") -> None:
        self.prefix = prefix
        self._redis = open_redis(url)

    async def close(self) -> None:
        await self._redis.aclose()

    def key(self, area_id: str) -> str:
        return f"{self.prefix}:storage:{area_id}"

    async def put(
        self, area_id: str, owner: str | None, ttl_s: int, values: dict[str, Value], merge: bool
    ) -> None:
        mapping: dict[str, bytes] = {"owner": (owner or "").encode()}
        for name, value in values.items():
            if isinstance(value, StoredFile):
                meta = orjson.dumps({"type": value.content_type, "name": value.filename})
                mapping[f"m:{name}"] = meta
                mapping[f"f:{name}"] = value.content
            else:
                mapping[f"s:{name}"] = value.encode()
        key = self.key(area_id)
        with redis_failures():
            async with self._redis.pipeline(transaction=True) as pipe:
                if not merge:
                    pipe.delete(key)
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.expire(key, ttl_s)
                await pipe.execute()

    async def get(self, area_id: str) -> StorageArea | None:
        with redis_failures():
            raw: dict[bytes, bytes] = await self._redis.hgetall(self.key(area_id))  # type: ignore[assignment]
        if not raw:
            return None
        owner = raw.get(b"owner", b"").decode() or None
        area = StorageArea(area_id, owner)
        for field_name, value in raw.items():
            kind, _, name = field_name.decode().partition(":")
            if kind == "s":
                area.values[name] = value.decode()
            elif kind == "f":
                meta = orjson.loads(raw.get(f"m:{name}".encode(), b"{}"))
                area.values[name] = StoredFile(value, meta.get("type", ""), meta.get("name", ""))
        return area

    async def delete(self, area_id: str) -> bool:
        with redis_failures():
            return bool(await self._redis.delete(self.key(area_id)))

    async def set_if_absent(self, area_id: str, name: str, value: str) -> bool:
        # HSETNX alone would make an expired area again, without an expiry.
        with redis_failures():
            key = self.key(area_id)
            done = await self._redis.eval(_SET_IF_ABSENT, 1, key, f"s:{name}", value)
        return bool(done)

    async def remove_value(self, area_id: str, name: str) -> None:
        with redis_failures():
            await self._redis.hdel(self.key(area_id), f"s:{name}")


_SET_IF_ABSENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""
