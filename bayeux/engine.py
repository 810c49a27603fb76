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

    def first_subscriber(self, pattern: str) -> None:
        """This node now has a subscriber for `pattern` (a Redis engine starts listening)."""

    def last_unsubscriber(self, pattern: str) -> None:
        """This node has no subscriber left for `pattern`."""

    def session_added(self, session: ServerSession) -> None:
        """A session was created on this node."""

    def session_removed(self, session: ServerSession) -> None:
        """A session left this node."""

    def user_bound(self, session: ServerSession, user_id: str) -> None:
        """A session now belongs to `user_id` (a Redis engine records the node)."""


class MemoryEngine(Engine):
    """One process: every subscriber is local."""
