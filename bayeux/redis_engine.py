"""The Redis engine: many server processes sharing fan-out and user routing through Redis.

Each publish costs one Redis PUBLISH, whatever the number of subscribers (Faye's Redis engine
does work per subscriber). Nodes listen only for the channels their own sessions subscribe to
(CometD Oort's "observe" model, without its full mesh): Redis itself routes a message to the
nodes that want it, and each node then delivers to its local subscribers. A node's
subscriptions live on its pub/sub connection, so when a node dies Redis forgets them with it.

This module is the only place that knows Redis key and channel names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from . import protocol as p
from .engine import Engine, EngineUnavailable
from .redis_client import open_redis
from .replay import EventTemplate
from .session import Delivery
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .server import BayeuxServer
    from .session import ServerSession

log = logging.getLogger("bayeux.redis")

_SEPARATOR = b"\n"  # never inside orjson output, which escapes control characters


class RedisEngine(Engine):
    """Fan-out and per-user delivery across nodes through Redis pub/sub.

    Publishes from this node are delivered to local subscribers at once and sent to Redis in
    pipelined batches (one round trip per loop turn, in publish order); messages that come
    back from Redis carry their origin node, so a node never delivers its own twice.

    A plain publish is accepted once it is queued for Redis (as CometD Oort and Faye accept
    a publish once the node has it): the publisher's connection goes on with its next message
    while the batch is written, which is what lets publishes coalesce. The queue is bounded
    (`max_pending`) and refused while Redis is unhealthy; a batch that Redis fails to take is
    logged with its size. Durable publishes wait for Redis, which assigns their replay ids.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "bayeux",
        node_id: str | None = None,
        max_pending: int = 10_000,
        heartbeat: float = 1.0,
        node_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.node_id = node_id or p.new_id()[:12]
        self.max_pending = max_pending
        """Most publishes waiting to be written to Redis; past it publishes are refused."""
        self.heartbeat = heartbeat
        self.node_timeout = node_timeout
        """A node silent this long (seconds) is taken for dead by the others."""
        self._node_lost_listeners: list[Callable[[str], None]] = []
        self._redis: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._pending: deque[_Command] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        self._healthy = False
        self._local_users: dict[str, int] = {}
        self._durable_channels: set[str] = set()
        self._scripts = _Scripts()

    # -- names ---------------------------------------------------------------------------
    def channel_topic(self, pattern: str) -> bytes:
        """The Redis pub/sub name for a Bayeux channel or wildcard pattern.

        `/a/*` and `/a/**` both become the Redis glob `…/a/*`, which also matches deeper
        channels; local delivery filters those out with the exact Bayeux rules.
        """
        if pattern.endswith("/**"):
            pattern = pattern[:-1]
        return f"{self.prefix}:c:{pattern}".encode()

    def user_topic(self, user_id: str) -> bytes:
        return f"{self.prefix}:u:{user_id}".encode()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, server: BayeuxServer) -> None:
        await super().start(server)
        self._redis = open_redis(self.url)
        self._pubsub = self._redis.pubsub()
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="bayeux-redis-writer"),
            asyncio.create_task(self._read_forever(), name="bayeux-redis-reader"),
            asyncio.create_task(self._watch_forever(), name="bayeux-redis-watch"),
        ]
        try:
            await self._heartbeat()
            # Subscribing to our own node topic opens the pub/sub connection at once.
            await self._subscribe(self._node_topic())
            self._healthy = True
        except (RedisError, OSError, EngineUnavailable) as exc:
            log.warning("Redis not reachable at start (%s); will keep trying", exc)

    async def close(self) -> None:
        if self._redis is not None and self._healthy:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.zrem(self.registry_key(), self.node_id)  # a clean leave
        for task in [*self._tasks, *self._background]:
            await cancel_and_wait(task)
        self._tasks = []
        self._fail_pending("engine closed")
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()

    @property
    def healthy(self) -> bool:
        return self._healthy

    # -- Engine interface ----------------------------------------------------------------
    async def publish(self, delivery: Delivery, exclude: str | None) -> None:
        self._check_healthy()
        self.server.dispatch_local(delivery, exclude)
        self._post(self.channel_topic(delivery.channel), delivery, exclude)

    async def deliver_to_user(self, user_id: str, delivery: Delivery) -> None:
        self._check_healthy()
        self.server.deliver_to_local_user(user_id, delivery)
        self._post(self.user_topic(user_id), delivery, None)

    async def deliver_to_session(self, node_id: str, client_id: str, delivery: Delivery) -> None:
        if node_id == self.node_id:
            self.server.deliver_to_local_session(client_id, delivery)
            return
        self._check_healthy()
        topic = f"{self.prefix}:n:{node_id}".encode()
        self._post(topic, delivery, client_id)

    async def subscribed(self, pattern: str) -> None:
        await self._subscribe(self.channel_topic(pattern), pattern=p.is_wildcard(pattern))

    def unsubscribed(self, pattern: str) -> None:
        topic = self.channel_topic(pattern)
        if p.is_wildcard(pattern):
            # `/a/*` and `/a/**` share one Redis glob: keep it while either is in use.
            sibling = pattern + "*" if pattern.endswith("/*") else pattern[:-1]
            if self.server.index.count(sibling):
                return
            self._spawn(self._unsubscribe(topic, pattern=True))
        else:
            self._spawn(self._unsubscribe(topic, pattern=False))

    async def user_bound(self, session: ServerSession, user_id: str) -> None:
        if self._local_users.get(user_id, 0) == 0:
            await self._subscribe(self.user_topic(user_id))  # counted only once subscribed
        self._local_users[user_id] = self._local_users.get(user_id, 0) + 1

    def user_unbound(self, session: ServerSession, user_id: str) -> None:
        count = self._local_users.get(user_id, 0) - 1
        if count > 0:
            self._local_users[user_id] = count
            return
        self._local_users.pop(user_id, None)
        self._spawn(self._unsubscribe(self.user_topic(user_id), pattern=False))

    async def publish_durable(
        self, channel: str, template: EventTemplate, exclude: str | None
    ) -> int:
        """One script call assigns the id, appends to the channel's stream and publishes.

        Every node, this one included, delivers it from Redis pub/sub, so all nodes see a
        durable channel's events in replay-id order.
        """
        self._check_healthy()
        head, tail = template
        counter, stream = self.stream_keys(channel)
        self._durable_channels.add(channel)
        args = [
            head,
            tail,
            self.channel_topic(channel),
            self.server.options.replay_max_length,
            self._header(exclude, channel),
        ]
        command = _Command(_APPEND_EVENT, (counter, stream), args, confirmed=True)
        self._queue(command)
        assert command.future is not None
        return int(await command.future)

    async def history(self, channel: str, after: int) -> list[Delivery]:
        self._check_healthy()
        assert self._redis is not None
        _, stream = self.stream_keys(channel)
        try:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrange(  # type: ignore[assignment]
                stream, min=f"{after + 1}-0"
            )
        except (RedisError, OSError) as exc:
            self._mark_unhealthy(exc)
            raise EngineUnavailable("Redis is unavailable") from exc
        return [
            Delivery.from_encoded(channel, fields[b"m"], int(entry_id.split(b"-")[0]))
            for entry_id, fields in entries
        ]

    async def history_bounds(self, channel: str) -> tuple[int, int]:
        self._check_healthy()
        assert self._redis is not None
        counter, stream = self.stream_keys(channel)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(counter)
                pipe.xrange(stream, count=1)
                last_raw, first_entries = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._mark_unhealthy(exc)
            raise EngineUnavailable("Redis is unavailable") from exc
        last = int(last_raw or 0)
        if not first_entries:
            return last + 1, last
        return int(first_entries[0][0].split(b"-")[0]), last

    async def save_sessions(self, sessions: list[ServerSession]) -> bool:
        if not sessions:
            return True
        assert self._redis is not None
        ttl = self.server.options.handover_ttl
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for session in sessions:
                    pipe.set(self.session_key(session.id), session.snapshot(), px=ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not hand %d sessions over: %s", len(sessions), exc)
            return False
        log.info("handed %d sessions over", len(sessions))
        return True

    async def restore_session(self, client_id: str) -> bytes | None:
        if not self._healthy:
            return None
        assert self._redis is not None
        try:
            saved = await self._redis.getdel(self.session_key(client_id))
        except (RedisError, OSError) as exc:
            self._mark_unhealthy(exc)
            return None
        return saved if isinstance(saved, bytes) else None

    async def return_session(self, client_id: str, snapshot: bytes) -> None:
        assert self._redis is not None
        ttl = self.server.options.handover_ttl
        with contextlib.suppress(RedisError, OSError):
            await self._redis.set(self.session_key(client_id), snapshot, px=ttl, nx=True)

    def session_key(self, client_id: str) -> str:
        return f"{self.prefix}:s:{client_id}"

    def stream_keys(self, channel: str) -> tuple[str, str]:
        """The replay-id counter and the stream of a durable channel (one cluster slot)."""
        base = f"{self.prefix}:r:{{{channel}}}"
        return base + ":n", base + ":s"

    # -- writing -------------------------------------------------------------------------
    def _post(self, topic: bytes, delivery: Delivery, exclude: str | None) -> None:
        """Queue a PUBLISH for the next pipelined batch (accepted, not yet confirmed)."""
        payload = self._header(exclude, delivery.channel) + b" -" + _SEPARATOR + delivery.encoded
        self._queue(_Command(None, (), [topic, payload]))

    def _header(self, exclude: str | None, channel: str) -> bytes:
        """What receivers need before the message: origin node, excluded session, channel;
        the replay id (or `-`) follows."""
        return f"{self.node_id} {exclude or '-'} {channel}".encode()

    def _queue(self, command: _Command) -> None:
        if len(self._pending) >= self.max_pending:
            raise EngineUnavailable("too many publishes waiting for Redis")
        self._pending.append(command)
        self._wake.set()

    async def _write_forever(self) -> None:
        """One writer, so publishes reach Redis in the order they were made."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = list(self._pending)
                self._pending.clear()
                await self._write(batch)

    async def _write(self, batch: list[_Command]) -> None:
        """One round trip for the batch. A script Redis does not know (first use, or Redis
        restarted) is loaded and its commands sent again, in order, before anything newer."""
        assert self._redis is not None
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for command in batch:
                    command.add_to(pipe, self._scripts)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._mark_unhealthy(exc)
            self._fail_batch(batch, "Redis is unavailable")
            return
        retry: list[_Command] = []
        for command, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError) and command.script is not None:
                retry.append(command)
            elif isinstance(result, Exception):
                command.fail(str(result))
                log.error("Redis refused a write: %s", result)
            else:
                command.succeed(result)
        if retry:
            await self._load_scripts_then_write(retry)

    async def _load_scripts_then_write(self, batch: list[_Command]) -> None:
        assert self._redis is not None
        try:
            for source in {command.script for command in batch if command.script is not None}:
                await self._redis.script_load(source)
        except (RedisError, OSError) as exc:
            self._mark_unhealthy(exc)
            self._fail_batch(batch, "Redis is unavailable")
            return
        await self._write(batch)

    def _fail_batch(self, batch: list[_Command], reason: str) -> None:
        unconfirmed = sum(1 for command in batch if command.future is None)
        if unconfirmed:
            log.warning("%d accepted publishes did not reach Redis: %s", unconfirmed, reason)
        for command in batch:
            command.fail(reason)

    def _fail_pending(self, reason: str) -> None:
        self._fail_batch(list(self._pending), reason)
        self._pending.clear()

    # -- reading -------------------------------------------------------------------------
    async def _read_forever(self) -> None:
        assert self._pubsub is not None
        pubsub = self._pubsub
        while True:
            if not pubsub.subscribed:
                await asyncio.sleep(0.1)
                continue
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                self._mark_unhealthy(exc)
                await asyncio.sleep(0.5)
                continue
            if message is not None:
                self._on_message(message)

    def _on_message(self, message: dict[str, object]) -> None:
        kind = message["type"]
        if kind in ("subscribe", "psubscribe"):
            topic = message["channel"]
            assert isinstance(topic, bytes)
            for future in self._confirmations.pop(topic, []):
                if not future.done():
                    future.set_result(None)
            return
        if kind not in ("message", "pmessage"):
            return
        topic, data = message["channel"], message["data"]
        assert isinstance(topic, bytes) and isinstance(data, bytes)
        header, _, encoded = data.partition(_SEPARATOR)
        origin, exclude, channel, replay_id = header.decode().split(" ", 3)
        durable = replay_id != "-"
        if origin == self.node_id and not durable:
            return  # delivered locally when it was published
        delivery = Delivery.from_encoded(channel, encoded, int(replay_id) if durable else None)
        if topic == self._node_topic():
            self.server.deliver_to_local_session(exclude, delivery)  # the target session
        elif topic.startswith(f"{self.prefix}:u:".encode()):
            user_id = topic[len(self.prefix) + 3 :].decode()
            self.server.deliver_to_local_user(user_id, delivery)
        else:
            self.server.dispatch_local(delivery, None if exclude == "-" else exclude)

    # -- subscriptions -------------------------------------------------------------------
    async def _subscribe(self, topic: bytes, pattern: bool = False) -> None:
        """Subscribe and wait for Redis to confirm, so nothing published after a Bayeux
        subscribe reply can be missed."""
        assert self._pubsub is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(topic, []).append(future)
        try:
            if pattern:
                await self._pubsub.psubscribe(topic)
            else:
                await self._pubsub.subscribe(topic)
            await asyncio.wait_for(asyncio.shield(future), timeout=5)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_unhealthy(exc)
            raise EngineUnavailable("Redis is unavailable") from exc

    async def _unsubscribe(self, topic: bytes, pattern: bool) -> None:
        assert self._pubsub is not None
        try:
            if pattern:
                await self._pubsub.punsubscribe(topic)
            else:
                await self._pubsub.unsubscribe(topic)
        except (RedisError, OSError) as exc:
            self._mark_unhealthy(exc)

    # -- health --------------------------------------------------------------------------
    async def _watch_forever(self) -> None:
        """Every second: heartbeat into the node registry (which doubles as the ping that
        tells whether Redis is there), notice dead nodes, and recover by ourselves when
        Redis comes back."""
        assert self._redis is not None and self._pubsub is not None
        beat = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            beat += 1
            try:
                async with asyncio.timeout(self.node_timeout):  # Redis may hang, not fail
                    await self._heartbeat()
                if beat % 10 == 0:
                    await self._trim_streams()
                if not self._pubsub.subscribed:
                    await self._subscribe(self._node_topic())
                if not self._healthy:
                    log.info("Redis is back")
                self._healthy = True
            except (RedisError, OSError, EngineUnavailable, TimeoutError) as exc:
                self._mark_unhealthy(exc)
            except Exception:  # never let the watch die: it is what brings the node back
                log.exception("Redis watch failed")

    async def _heartbeat(self) -> None:
        assert self._redis is not None
        now_ms = int(time.time() * 1000)
        cutoff = now_ms - int(self.node_timeout * 1000)
        registry = self.registry_key()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(registry, {self.node_id: now_ms})
            pipe.zrangebyscore(registry, "-inf", cutoff)
            _, dead = await pipe.execute()
        for node in dead:
            # ZREM answers 1 to exactly one survivor: that one reports the loss.
            if await self._redis.zrem(registry, node):
                name = node.decode()
                log.warning("node %s stopped heartbeating: removed from the cluster", name)
                for listener in self._node_lost_listeners:
                    listener(name)

    async def nodes(self) -> list[str]:
        """The live nodes of the cluster, this one included."""
        assert self._redis is not None
        names = await self._redis.zrange(self.registry_key(), 0, -1)
        return [name.decode() if isinstance(name, bytes) else str(name) for name in names]

    def on_node_lost(self, listener: Callable[[str], None]) -> None:
        """Called on one surviving node with the id of a node that stopped heartbeating."""
        self._node_lost_listeners.append(listener)

    def registry_key(self) -> str:
        return f"{self.prefix}:nodes"

    async def _trim_streams(self) -> None:
        """Drop events older than `replay_max_age` from the streams this node writes to."""
        assert self._redis is not None
        max_age = self.server.options.replay_max_age
        for channel in list(self._durable_channels):
            stream = self.stream_keys(channel)[1]
            await self._scripts.run(self._redis, _TRIM_BY_AGE, [stream], [max_age])

    def _mark_unhealthy(self, exc: BaseException) -> None:
        if self._healthy:
            log.warning("Redis unavailable: %s", exc)
        self._healthy = False

    def _check_healthy(self) -> None:
        if not self._healthy:
            raise EngineUnavailable("Redis is unavailable")

    def _node_topic(self) -> bytes:
        return f"{self.prefix}:n:{self.node_id}".encode()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Command:
    """One queued write: a PUBLISH, or a script call. A confirmed command has a future that
    gets Redis's answer; a plain publish has none (it was accepted when queued)."""

    __slots__ = ("args", "future", "keys", "script")

    def __init__(
        self, script: str | None, keys: tuple[str, ...], args: list[Any], confirmed: bool = False
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future: asyncio.Future[Any] | None = (
            asyncio.get_running_loop().create_future() if confirmed else None
        )

    def add_to(self, pipe: Pipeline, scripts: _Scripts) -> None:
        if self.script is None:
            pipe.publish(*self.args)
        else:
            pipe.evalsha(scripts.sha(self.script), len(self.keys), *self.keys, *self.args)

    def succeed(self, result: Any) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(result)

    def fail(self, reason: str) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(EngineUnavailable(reason))


class _Scripts:
    """Lua scripts by source, sent as EVALSHA and loaded only when Redis answers NOSCRIPT
    (redis-py's pipelines would ask SCRIPT EXISTS before every batch)."""

    def __init__(self) -> None:
        self._shas: dict[str, str] = {}

    def sha(self, source: str) -> str:
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        return sha

    async def run(
        self, redis: aioredis.Redis, source: str, keys: list[Any], args: list[Any]
    ) -> Any:
        try:
            return await redis.evalsha(self.sha(source), len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(source)
            return await redis.evalsha(self.sha(source), len(keys), *keys, *args)


# KEYS: replay-id counter, stream. ARGV: head, tail, pub/sub topic, max length, header.
_APPEND_EVENT = """
local id = redis.call('INCR', KEYS[1])
local payload = ARGV[1] .. id .. ARGV[2]
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], id .. '-0', 'm', payload, 't', ms)
redis.call('PUBLISH', ARGV[3], ARGV[5] .. ' ' .. id .. string.char(10) .. payload)
return id
"""

# KEYS: stream. ARGV: max age (ms). Deletes up to 1000 expired events from the front.
_TRIM_BY_AGE = """
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[1])
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1000)
local removed = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local t = nil
  for i = 1, #fields, 2 do
    if fields[i] == 't' then t = tonumber(fields[i + 1]) end
  end
  if t == nil or t >= cutoff then break end
  redis.call('XDEL', KEYS[1], entry[1])
  removed = removed + 1
end
return removed
"""

