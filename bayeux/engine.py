"""Engines: where publishes meet subscribers.

The server keeps the local subscription index and does local delivery; an engine decides how
a publish reaches every node's local subscribers. The memory engine is one process; the
Redis engine (many processes) implements the same interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .session import Delivery

if TYPE_CHECKING:
    from .server import BayeuxServer
    from .session import ServerSession


class EngineUnavailable(Exception):
    """The engine cannot do this now (e.g. Redis is down): the client gets a clear error."""


class Engine:
    """The fan-out and directory interface; this base class is the in-memory engine."""

    server: BayeuxServer

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
