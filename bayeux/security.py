"""Security hooks: a policy for handshake, subscribe and publish, plus per-channel authorizers.

Applications plug their identity checks in here (CometD's SecurityPolicy and Authorizer),
never into the protocol core.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .protocol import Message, is_meta

if TYPE_CHECKING:
    from .server import RequestContext
    from .session import ServerSession


class Denied(Exception):
    """Raised by a policy or authorizer to refuse with a reason the client will see."""

    def __init__(self, reason: str = "", reconnect: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reconnect = reconnect


class SecurityPolicy:
    """CometD's default policy: anyone may handshake; only handshaken sessions may subscribe
    or publish, and never on /meta/ channels. Subclass and override what you need.

    Each method returns True to allow, False to deny, or raises Denied(reason).
    """

    async def can_handshake(
        self, session: ServerSession, message: Message, context: RequestContext
    ) -> bool:
        return True

    async def can_subscribe(self, session: ServerSession, channel: str, message: Message) -> bool:
        return not is_meta(channel)

    async def can_publish(self, session: ServerSession, channel: str, message: Message) -> bool:
        return not is_meta(channel)


class Operation(enum.Enum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"


class Authorization(enum.Enum):
    GRANT = "grant"
    DENY = "deny"
    IGNORE = "ignore"


Authorizer = Callable[
    [Operation, str, "ServerSession", Message], Authorization | Awaitable[Authorization]
]
"""(operation, channel, session, message) -> GRANT, DENY or IGNORE (or an awaitable of it)."""
