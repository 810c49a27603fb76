"""Notification subscriptions (GMS Notification API): tag/filter grammar, matching, and the
stores that keep subscriptions until they expire.

A subscription says "deliver events whose tag matches `filter` to this target (comet user,
callback URL, device...)". Filters are exact tags, `prefix.*` (every tag under `prefix.`, at
any depth) or `*` (every tag). Matching is case-sensitive; `ors.*` does not match `ors`.

Stores index subscriptions by filter, so finding the subscriptions of a tag looks up the
tag's candidate filters (`*`, each `prefix.*` of the tag, the tag itself): its cost grows
with the tag's segments and the matches, not with the number of subscriptions. A second
index by subscriber serves delete-by-subscriber.

* `MemorySubscriptions`: one process; expired subscriptions are swept (heap by deadline).
* `RedisSubscriptions`: one hash per subscription with native expiry, a set per filter and
  per subscriber (each set expires with its longest-lived member; members whose hash has
  expired are pruned when met). Every node of a cluster sees the same subscriptions.
"""

from __future__ import annotations

import heapq
import re
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from bayeux.redis_client import open_redis

from .store import redis_failures

TAG_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
FILTER_RE = re.compile(r"^(\*|[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*(\.\*)?)$")


def valid_tag(tag: object) -> bool:
    return isinstance(tag, str) and TAG_RE.fullmatch(tag) is not None


def valid_filter(value: object) -> bool:
    return isinstance(value, str) and FILTER_RE.fullmatch(value) is not None


def matches(filter_: str, tag: str) -> bool:
    """Whether a subscription filter selects an event tag."""
    if filter_ == "*":
        return True
    if filter_.endswith(".*"):
        return tag.startswith(filter_[:-1])
    return filter_ == tag


def candidate_filters(tag: str) -> list[str]:
    """Every filter that can match `tag`: `*`, `<p>.*` for each proper dotted prefix, the tag.

    `matches(f, tag)` holds for a valid filter `f` exactly when `f` is in this list.
    """
    parts = tag.split(".")
    prefixes = [".".join(parts[:end]) + ".*" for end in range(1, len(parts))]
    return ["*", *prefixes, tag]


@dataclass
class Subscription:
    """One subscription, or the one-off target of a publish straight to a device."""

    id: str
    subscriber_id: str
    filter: str
    type: str
    """Delivery type: comet, httpcb, customhttp, fcm, gcm, ios, wns."""
    device_id: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    provider: str | None = None
    language: str | None = None
    authorization: str | None = None
    gms_user: str | None = None
    """comet: the end user whose CometD sessions get the notifications."""
    expires_at: float = 0.0
    """Wall-clock time (epoch seconds) when it lapses; informational."""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Subscription:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(**{name: data[name] for name in _FIELDS if name in data})


_FIELDS = tuple(f.name for f in fields(Subscription))


class SubscriptionStore(ABC):
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def sweep(self) -> int:
        """Forget expired subscriptions now; how many were removed (where that is known)."""
        return 0

    @abstractmethod
    async def add(self, subscription: Subscription, ttl_s: float) -> None:
        """Keep `subscription` for `ttl_s` seconds (sets its `expires_at`)."""

    @abstractmethod
    async def get(self, subscription_id: str) -> Subscription | None: ...

    @abstractmethod
    async def delete(self, subscription_id: str) -> bool: ...

    @abstractmethod
    async def delete_subscriber(self, subscriber_id: str) -> int:
        """Delete every live subscription of a subscriber; how many there were."""

    @abstractmethod
    async def matching(self, tag: str) -> list[Subscription]:
        """Live subscriptions whose filter matches `tag`."""


class MemorySubscriptions(SubscriptionStore):
    def __init__(self) -> None:
        self._subscriptions: dict[str, tuple[float, Subscription]] = {}
        self._by_filter: dict[str, set[str]] = {}
        self._by_subscriber: dict[str, set[str]] = {}
        self._deadlines: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._subscriptions)

    async def sweep(self) -> int:
        return self._sweep()

    async def add(self, subscription: Subscription, ttl_s: float) -> None:
        self._sweep()
        deadline = time.monotonic() + ttl_s
        subscription.expires_at = time.time() + ttl_s
        self._subscriptions[subscription.id] = (deadline, subscription)
        self._by_filter.setdefault(subscription.filter, set()).add(subscription.id)
        self._by_subscriber.setdefault(subscription.subscriber_id, set()).add(subscription.id)
        heapq.heappush(self._deadlines, (deadline, subscription.id))

    async def get(self, subscription_id: str) -> Subscription | None:
        self._sweep()
        entry = self._subscriptions.get(subscription_id)
        return entry[1] if entry is not None else None

    async def delete(self, subscription_id: str) -> bool:
        self._sweep()
        return self._remove(subscription_id)

    async def delete_subscriber(self, subscriber_id: str) -> int:
        self._sweep()
        ids = list(self._by_subscriber.get(subscriber_id, ()))
        return sum(self._remove(subscription_id) for subscription_id in ids)

    async def matching(self, tag: str) -> list[Subscription]:
        self._sweep()
        found: list[Subscription] = []
        for candidate in candidate_filters(tag):
            for subscription_id in self._by_filter.get(candidate, ()):
                found.append(self._subscriptions[subscription_id][1])
        return found

    def _sweep(self) -> int:
        now = time.monotonic()
        removed = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, subscription_id = heapq.heappop(self._deadlines)
            entry = self._subscriptions.get(subscription_id)
            if entry is not None and entry[0] <= now:
                removed += self._remove(subscription_id)
        return removed

    def _remove(self, subscription_id: str) -> bool:
        entry = self._subscriptions.pop(subscription_id, None)
        if entry is None:
            return False
        subscription = entry[1]
        _discard(self._by_filter, subscription.filter, subscription_id)
        _discard(self._by_subscriber, subscription.subscriber_id, subscription_id)
        return True


def _discard(index: dict[str, set[str]], key: str, member: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del index[key]


# KEYS: subscription hash, filter set, subscriber set. ARGV: id, json, filter, subscriber, ms.
_ADD = """
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'filter', ARGV[3], 'subscriber', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
for i = 2, 3 do
  redis.call('SADD', KEYS[i], ARGV[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""

# KEYS: subscription hash. ARGV: filter-set key prefix, subscriber-set key prefix, id.
_DELETE = """
local fields = redis.call('HMGET', KEYS[1], 'filter', 'subscriber')
if not fields[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[1] .. fields[1], ARGV[3])
redis.call('SREM', ARGV[2] .. fields[2], ARGV[3])
return 1
"""


class RedisSubscriptions(SubscriptionStore):
    """Keys: `<prefix>:notification:sub:<id>` (hash: data, filter, subscriber),
    `<prefix>:notification:filter:<filter>` and `<prefix>:notification:subscriber:<id>`
    (sets of subscription ids)."""

    def __init__(self, url: str, prefix: str = "gms") -> None:
        self.base = f"{prefix}:notification"
        self._redis = open_redis(url)
        self._add = self._redis.register_script(_ADD)
        self._delete = self._redis.register_script(_DELETE)

    async def close(self) -> None:
        await self._redis.aclose()

    def sub_key(self, subscription_id: str) -> str:
        return f"{self.base}:sub:{subscription_id}"

    def filter_key(self, filter_: str) -> str:
        return f"{self.base}:filter:{filter_}"

    def subscriber_key(self, subscriber_id: str) -> str:
        return f"{self.base}:subscriber:{subscriber_id}"

    async def add(self, subscription: Subscription, ttl_s: float) -> None:
        subscription.expires_at = time.time() + ttl_s
        keys = [
            self.sub_key(subscription.id),
            self.filter_key(subscription.filter),
            self.subscriber_key(subscription.subscriber_id),
        ]
        args: list[str | bytes | int] = [
            subscription.id,
            subscription.to_json(),
            subscription.filter,
            subscription.subscriber_id,
            max(1, round(ttl_s * 1000)),
        ]
        with redis_failures():
            await self._add(keys=keys, args=args)

    async def get(self, subscription_id: str) -> Subscription | None:
        with redis_failures():
            raw = await self._redis.hget(self.sub_key(subscription_id), "data")
        return Subscription.from_json(raw) if raw else None

    async def delete(self, subscription_id: str) -> bool:
        with redis_failures():
            return bool(await self._delete_one(subscription_id))

    async def delete_subscriber(self, subscriber_id: str) -> int:
        with redis_failures():
            ids = await self._redis.smembers(self.subscriber_key(subscriber_id))
            deleted = 0
            for raw_id in ids:
                deleted += int(await self._delete_one(_text(raw_id)))
            # Ids whose hash had already expired are left: drop them and the empty set.
            if ids:
                await self._redis.srem(self.subscriber_key(subscriber_id), *ids)
            return deleted

    async def _delete_one(self, subscription_id: str) -> Any:
        args = [f"{self.base}:filter:", f"{self.base}:subscriber:", subscription_id]
        return await self._delete(keys=[self.sub_key(subscription_id)], args=args)

    async def matching(self, tag: str) -> list[Subscription]:
        keys = [self.filter_key(candidate) for candidate in candidate_filters(tag)]
        with redis_failures():
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.smembers(key)
                members: list[set[bytes]] = await pipe.execute()
            found = [
                (key, raw_id) for key, ids in zip(keys, members, strict=True) for raw_id in ids
            ]
            if not found:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, raw_id in found:
                    pipe.hget(self.sub_key(_text(raw_id)), "data")
                data: list[bytes | None] = await pipe.execute()
            subscriptions: list[Subscription] = []
            stale: list[tuple[str, bytes]] = []
            for (key, raw_id), raw in zip(found, data, strict=True):
                if raw is None:
                    stale.append((key, raw_id))
                else:
                    subscriptions.append(Subscription.from_json(raw))
            if stale:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, raw_id in stale:
                        pipe.srem(key, raw_id)
                    await pipe.execute()
            return subscriptions


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
