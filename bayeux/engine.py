"""Engines: where publishes meet subscribers.

The server keeps the local subscription index and does local delivery; an engine decides how
a publish reaches every node's local subscribers. The memory engine is one process; the
Redis engine (many processes) implements the same interface.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from .options import BayeuxOptions
from .replay import EventTemplate, fill_template
from .session import Delivery

if TYPE_CHECKING:
    from .server import BayeuxServer
    from .session import ServerSession


class EngineUnavailable(Exception):
    """The engine cannot do this now (e.g. Redis is down): the client gets a clear error."""


class Engine:
    """The fan-out and directory interface; this base class is the in-memory engine."""

    server: BayeuxServer
    node_id: str = "memory"

    def __init__(self) -> None:
        self._logs: dict[str, MemoryEventLog] = {}

    async def start(self, server: BayeuxServer) -> None:
        self.server = server

    async def close(self) -> None:
        return None

    @property
    def healthy(self) -> bool:
        return True

    async def publish(self, delivery: Delivery, exclude: str | None) -> None:
        """Deliver a broadcast to every subscriber of its channel, on every node."""
        self.server.dispatch_local(delivery, exclude)

    async def deliver_to_user(self, user_id: str, delivery: Delivery) -> None:
        """Deliver to every session of one user, on every node."""
        self.server.deliver_to_local_user(user_id, delivery)

    async def deliver_to_session(self, node_id: str, client_id: str, delivery: Delivery) -> None:
        """Deliver to one session on the node that holds it."""
        self.server.deliver_to_local_session(client_id, delivery)

    async def publish_durable(
        self, channel: str, template: EventTemplate, exclude: str | None
    ) -> int:
        """Give a durable event its replay id, retain it, and deliver it; returns the id."""
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = MemoryEventLog(self.server.options)
        delivery = fill_template(template, channel, log.next_id())
        log.append(delivery)
        self.server.dispatch_local(delivery, exclude)
        assert delivery.replay_id is not None
        return delivery.replay_id

    async def history(self, channel: str, after: int) -> list[Delivery]:
        """Retained events of a durable channel with a replay id above `after`, in order."""
        log = self._logs.get(channel)
        return log.after(after) if log is not None else []

    async def history_bounds(self, channel: str) -> tuple[int, int]:
        """(first retained replay id, last assigned one); (1, 0) for no events yet."""
        log = self._logs.get(channel)
        return log.bounds() if log is not None else (1, 0)

    async def save_sessions(self, sessions: list[ServerSession]) -> bool:
        """Keep sessions for another node (or this one restarted) to adopt; False if this
        engine cannot (the memory engine dies with its process)."""
        return False

    async def restore_session(self, client_id: str) -> bytes | None:
        """Take a saved session's snapshot (at most one node gets it), or None."""
        return None

    async def return_session(self, client_id: str, snapshot: bytes) -> None:
        """Put back a snapshot taken by mistake (a request from another browser)."""

    async def subscribed(self, pattern: str) -> None:
        """This node has its first subscriber for `pattern`: start receiving it from other
        nodes before the subscribe is answered."""

    def unsubscribed(self, pattern: str) -> None:
        """This node has no subscriber left for `pattern`."""

    async def user_bound(self, session: ServerSession, user_id: str) -> None:
        """A session of this node now belongs to `user_id`."""

    def user_unbound(self, session: ServerSession, user_id: str) -> None:
        """A session of this node no longer belongs to `user_id` (unbound or removed)."""


class MemoryEngine(Engine):
    """One process: every subscriber is local."""


class MemoryEventLog:
    """One durable channel's retained events, bounded by count and age."""

    def __init__(self, options: BayeuxOptions) -> None:
        self._events: deque[tuple[float, Delivery]] = deque(maxlen=options.replay_max_length)
        self._max_age = options.replay_max_age / 1000
        self._last = 0

    def next_id(self) -> int:
        self._last += 1
        return self._last

    def append(self, delivery: Delivery) -> None:
        now = time.monotonic()
        self._events.append((now, delivery))
        while self._events and now - self._events[0][0] > self._max_age:
            self._events.popleft()

    def after(self, replay_id: int) -> list[Delivery]:
        return [d for _, d in self._events if d.replay_id is not None and d.replay_id > replay_id]

    def bounds(self) -> tuple[int, int]:
        if not self._events:
            return self._last + 1, self._last
        first = self._events[0][1].replay_id
        assert first is not None
        return first, self._last
