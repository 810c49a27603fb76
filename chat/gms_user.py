"""The `gms_user` identity: GMS routes `/_genesys` notifications (Notification API `comet`
subscriptions, Chat v1) to every CometD session of one end user.

The identity comes from the `gms_user` HTTP header of the handshake (for websockets, of the
upgrade request), set or checked by the security gateway in front of GMS; browsers that
cannot set headers on a websocket may send `ext.gms_user` instead (our extension).
"""

from __future__ import annotations

from bayeux import BayeuxServer, RequestContext, SecurityPolicy, ServerSession
from bayeux.extensions import message_ext
from bayeux.protocol import Message

GENESYS_CHANNEL = "/_genesys"


def directory_key(gms_user: str) -> str:
    """The Bayeux user id under which a gms_user's sessions are found."""
    return f"gms:{gms_user}"


def gms_user_of(message: Message, context: RequestContext) -> str | None:
    header = context.headers.get("gms_user")
    if header:
        return header.strip()
    value = message_ext(message).get("gms_user")
    return value.strip() if isinstance(value, str) and value.strip() else None


class GmsSecurityPolicy(SecurityPolicy):
    """CometD's default policy, plus binding each session to its `gms_user`."""

    def __init__(self, server: BayeuxServer) -> None:
        self.server = server

    async def can_handshake(
        self, session: ServerSession, message: Message, context: RequestContext
    ) -> bool:
        user = gms_user_of(message, context)
        if user is not None:
            session.attributes["gms_user"] = user
            await self.server.bind_user(session, directory_key(user))
        return True

    async def can_publish(self, session: ServerSession, channel: str, message: Message) -> bool:
        # /_genesys carries per-user notifications: a client publishing there would reach
        # every user's subscribed sessions.
        return channel != GENESYS_CHANNEL and await super().can_publish(session, channel, message)


async def notify_gms_user(server: BayeuxServer, gms_user: str, payload: object) -> None:
    """Deliver one `/_genesys` notification to every session of that user, on any node."""
    await server.deliver_to_user(directory_key(gms_user), GENESYS_CHANNEL, payload)
