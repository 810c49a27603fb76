"""The Redis chat store: chats that outlive the node that served them.

Every node of a cluster reads and writes the same chats, so a node can die and its clients
resume on another one with nothing lost. Per chat there are two keys in one cluster slot (the
`{chat_id}` hash tag):

* `<prefix>:chat:{<chat_id>}`, a hash: `r` the session record (JSON), `v` its version;
* `<prefix>:chat:{<chat_id>}:t`, a Redis Stream, the transcript: one entry per event, with the
  stream id `<index>-0` and the event record (JSON) in field `e`, so reading from an index is
  one XRANGE.

A commit is one Lua script that checks the version, writes the record with the next version
and appends the events, all or nothing: two nodes never both commit from the same version.

Beside them: `<prefix>:chat-key:<secureKey>` (the chat id a secure key opens; with a PX TTL during
the grace window after a rotation) and `<prefix>:chat-timers`, a sorted set of chat timers (member
`<chat_id>|<kind>`, score the due time in ms) that a script claims, so each due timer is handed
to exactly one node.

This module is the only place that knows the chat store's Redis key names.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from bayeux.redis_client import open_redis

from .model import ChatSession, Event
from .store import ChatStore, Recent, redis_failures

log = logging.getLogger("gms.chat.redis")

T = TypeVar("T")

_TIMER_SEPARATOR = "|"  # never in a chat id ([0-9A-Za-z])
_MAX_CLAIM = 1000  # members one claim script unpacks at most (Lua's stack is bounded)
RECENT = 10_000
"""Chats (and secure keys) whose last known record (and chat id) a node keeps: a change or a
secure-key lookup for them costs no read. Nodes are sticky, so a chat is mostly changed on
one node; when another one changed it, the commit's version check sends us back to Redis."""


class RedisChatStore(ChatStore):
    def __init__(self, url: str, prefix: str = "gms") -> None:
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis = open_redis(url)
        self._create = self._redis.register_script(_CREATE)
        self._commit = self._redis.register_script(_COMMIT)
        self._retire = self._redis.register_script(_RETIRE)
        self._expire_key = self._redis.register_script(_EXPIRE_KEY_IF_OPENS)
        self._claim = self._redis.register_script(_CLAIM_DUE)
        self._recent = Recent[tuple[bytes, int]](RECENT)
        """chat id -> (record JSON, version) as last loaded or committed here."""
        self._key_owners = Recent[str](RECENT)
        """secure key -> chat id; the engine checks that the key still opens the chat."""

    # -- names ---------------------------------------------------------------------------
    def chat_key(self, chat_id: str) -> str:
        """The hash with the session record and version."""
        return f"{self.prefix}:chat:{{{chat_id}}}"

    def transcript_key(self, chat_id: str) -> str:
        """The stream of transcript events (same cluster slot as `chat_key`)."""
        return f"{self.prefix}:chat:{{{chat_id}}}:t"

    def secure_key_key(self, key: str) -> str:
        return f"{self.prefix}:chat-key:{key}"

    def timers_key(self) -> str:
        return f"{self.prefix}:chat-timers"

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            # Not fatal: every operation reports StoreUnavailable until Redis is back.
            log.warning("Redis chat store not reachable at %s: %s", self.url, exc)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    # -- chats ---------------------------------------------------------------------------
    async def create(self, session: ChatSession, events: list[Event]) -> None:
        _check_ascending(events, 0)
        session.version = 1
        keys = [self.chat_key(session.chat_id), self.transcript_key(session.chat_id)]
        args = [_dumps(session.to_record()), *_event_args(events)]
        created = await self._call(self._create(keys=keys, args=args))
        if not int(created):
            raise ValueError(f"chat {session.chat_id} exists")

    async def load(self, chat_id: str) -> ChatSession | None:
        record, version = await self._call(self._redis.hmget(self.chat_key(chat_id), ["r", "v"]))
        if not isinstance(record, bytes) or version is None:
            self._recent.drop(chat_id)
            return None
        self._recent.put(chat_id, (record, int(version)))
        return _session(record, int(version))

    async def load_for_change(self, chat_id: str) -> ChatSession | None:
        recent = self._recent.get(chat_id)
        return _session(*recent) if recent is not None else await self.load(chat_id)

    async def commit(
        self, session: ChatSession, expected_version: int, events: list[Event]
    ) -> bool:
        _check_ascending(events, 0)
        new_version = expected_version + 1
        record = session.to_record()
        record["version"] = new_version
        keys = [self.chat_key(session.chat_id), self.transcript_key(session.chat_id)]
        dumped = _dumps(record)
        args = [expected_version, dumped, *_event_args(events)]
        self._recent.drop(session.chat_id)  # until we know what Redis holds
        result = int(await self._call(self._commit(keys=keys, args=args)))
        if result == -1:
            raise ValueError(f"chat {session.chat_id}: event indexes do not follow the transcript")
        if result != 1:
            return False
        session.version = new_version
        self._recent.put(session.chat_id, (dumped, new_version))
        return True

    async def events(self, chat_id: str, from_index: int = 1) -> list[Event]:
        start = f"{from_index}-0" if from_index > 0 else "-"
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._call(
            self._redis.xrange(self.transcript_key(chat_id), min=start)  # type: ignore[arg-type]
        )
        return [Event.from_record(orjson.loads(fields[b"e"])) for _, fields in entries]

    # -- secure keys ---------------------------------------------------------------------
    async def find_by_secure_key(self, key: str) -> str | None:
        known = self._key_owners.get(key)
        if known is not None:
            return known
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self.secure_key_key(key))
            pipe.pttl(self.secure_key_key(key))
            chat_id, ttl = await self._call(pipe.execute())
        if not isinstance(chat_id, bytes):
            return None
        if ttl == -1:  # a key in its grace window or retired is never remembered
            self._key_owners.put(key, chat_id.decode())
        return chat_id.decode()

    async def index_secure_key(self, key: str, chat_id: str, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else max(int(ttl_s * 1000), 1)
        await self._call(self._redis.set(self.secure_key_key(key), chat_id, px=px))

    async def drop_secure_key(self, key: str) -> None:
        self._key_owners.drop(key)
        await self._call(self._redis.delete(self.secure_key_key(key)))

    async def retire(self, chat_id: str, after_s: float) -> None:
        """Expire the chat's keys (and the secure keys that open it) `after_s` from now; a
        secure key that already expires sooner (a rotated one) keeps its earlier end."""
        ms = max(int(after_s * 1000), 0)
        self._recent.drop(chat_id)
        keys = [self.chat_key(chat_id), self.transcript_key(chat_id)]
        record = await self._call(self._retire(keys=keys, args=[ms]))
        if not record:
            return
        stored = orjson.loads(record)
        for key in {stored.get("secure_key"), stored.get("previous_secure_key")}:
            if key:
                # Secure keys live in other slots than the chat: one script call each.
                await self._call(
                    self._expire_key(keys=[self.secure_key_key(key)], args=[chat_id, ms])
                )

    # -- timers --------------------------------------------------------------------------
    async def schedule(self, chat_id: str, kind: str, due_ms: int) -> None:
        await self._call(self._redis.zadd(self.timers_key(), {_member(chat_id, kind): due_ms}))

    async def cancel(self, chat_id: str, kind: str) -> None:
        await self._call(self._redis.zrem(self.timers_key(), _member(chat_id, kind)))

    async def set_timers(
        self, chat_id: str, due: dict[str, int], cancel: tuple[str, ...] = ()
    ) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            if cancel:
                pipe.zrem(self.timers_key(), *(_member(chat_id, kind) for kind in cancel))
            if due:
                members = {_member(chat_id, kind): due_ms for kind, due_ms in due.items()}
                pipe.zadd(self.timers_key(), members)
            await self._call(pipe.execute())

    async def claim_due(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        limit = max(0, min(limit, _MAX_CLAIM))
        if limit == 0:
            return []
        members = await self._call(self._claim(keys=[self.timers_key()], args=[now_ms, limit]))
        claimed: list[tuple[str, str]] = []
        for member in members:
            chat_id, _, kind = member.decode().partition(_TIMER_SEPARATOR)
            claimed.append((chat_id, kind))
        return claimed

    # -- helpers -------------------------------------------------------------------------
    async def _call(self, awaitable: Awaitable[T]) -> T:
        with redis_failures():
            return await awaitable



def _session(record: bytes, version: int) -> ChatSession:
    session = ChatSession.from_record(orjson.loads(record))
    session.version = version
    return session


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _event_args(events: list[Event]) -> list[Any]:
    args: list[Any] = []
    for event in events:
        args.append(event.index)
        args.append(_dumps(event.to_record()))
    return args


def _check_ascending(events: list[Event], after: int) -> None:
    for event in events:
        if event.index <= after:
            raise ValueError(f"event index {event.index} does not follow {after}")
        after = event.index


def _member(chat_id: str, kind: str) -> str:
    return f"{chat_id}{_TIMER_SEPARATOR}{kind}"


# KEYS: chat hash, transcript stream. ARGV: record, then (index, event record) pairs.
# 0 if the chat exists, else 1 with the chat at version 1.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'v', 1)
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[2], ARGV[i] .. '-0', 'e', ARGV[i + 1])
end
return 1
"""

# KEYS: chat hash, transcript stream. ARGV: expected version, new record, then (index, event
# record) pairs in ascending index order. 1 committed; 0 version conflict (or no such chat);
# -1 the first index is not after the transcript's last (nothing written: checked first, as a
# script that fails halfway keeps its earlier writes).
_COMMIT = """
local version = redis.call('HGET', KEYS[1], 'v')
if not version or tonumber(version) ~= tonumber(ARGV[1]) then return 0 end
if #ARGV >= 3 then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last > 0 then
    local last_index = tonumber(string.match(last[1][1], '^(%d+)'))
    if tonumber(ARGV[3]) <= last_index then return -1 end
  end
end
redis.call('HSET', KEYS[1], 'r', ARGV[2], 'v', tonumber(ARGV[1]) + 1)
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[2], ARGV[i] .. '-0', 'e', ARGV[i + 1])
end
return 1
"""

# KEYS: chat hash, transcript stream. ARGV: ms. Returns the session record (or nil).
_RETIRE = """
local record = redis.call('HGET', KEYS[1], 'r')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return record
"""

# KEYS: secure-key index key. ARGV: chat id, ms. Expire it in ms unless it opens another chat
# or already expires sooner.
_EXPIRE_KEY_IF_OPENS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and ttl <= tonumber(ARGV[2]) then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# KEYS: timers. ARGV: now (ms), limit. Removes and returns the due members, earliest first:
# whoever runs this gets them, and nobody else.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""
