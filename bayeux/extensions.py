"""Extensions: hooks on every incoming message, every reply and every delivery.

Incoming hooks run in registration order, outgoing hooks in reverse order, as in CometD.
Returning False from a hook deletes the message (the client sees `404::message_deleted`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .protocol import META_CONNECT, META_HANDSHAKE, Message

if TYPE_CHECKING:
    from .server import RequestContext
    from .session import Delivery, ServerSession


class Extension:
    """Base class: override only the hooks you need (unused ones cost nothing)."""

    def incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        """A message from a client, before the server acts on it (session None if unknown)."""
        return True

    def outgoing(self, session: ServerSession | None, reply: Message) -> bool:
        """A reply to a client's message (meta replies, publish replies)."""
        return True

    def send(self, session: ServerSession, delivery: Delivery) -> Delivery | None:
        """A message about to be queued for one session; return a replacement, or None to
        drop it. Copy before changing: the same Delivery is shared by every subscriber."""
        return delivery


def message_ext(message: Message) -> dict[str, Any]:
    ext = message.get("ext")
    return ext if isinstance(ext, dict) else {}


def reply_ext(reply: Message) -> dict[str, Any]:
    ext = reply.get("ext")
    if not isinstance(ext, dict):
        ext = reply["ext"] = {}
    return ext


class AckExtension(Extension):
    """CometD's message acknowledgement: reliable, ordered server-to-client delivery.

    The client asks with handshake `ext.ack: true`; from then on messages go out only in
    /meta/connect replies, each reply carries `ext.ack: <batch>`, and the client echoes the
    last batch it got in its next connect so the server can drop it. Anything not acked is
    sent again.
    """

    def incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        if session is None:
            return True
        channel = message.get("channel")
        ext = message_ext(message)
        if channel == META_HANDSHAKE and ext.get("ack") is True:
            session.enable_ack()
        elif channel == META_CONNECT and session.ack is not None:
            batch = ext.get("ack")
            if isinstance(batch, int) and not isinstance(batch, bool):
                session.ack.acknowledge(batch)
        return True

    def outgoing(self, session: ServerSession | None, reply: Message) -> bool:
        if session is None or session.ack is None or not reply.get("successful"):
            return True
        channel = reply.get("channel")
        if channel == META_HANDSHAKE:
            reply_ext(reply)["ack"] = True
        elif channel == META_CONNECT and session.ack_batch_sent is not None:
            reply_ext(reply)["ack"] = session.ack_batch_sent
        return True


class TimesyncExtension(Extension):
    """CometD's timesync: lets clients estimate their clock offset from the server's.

    The client sends `ext.timesync: {tc, l, o}`; the reply carries `{tc, ts, p, a}`: the
    server's receive time `ts`, how long the server held the message `p`, and the accuracy.
    """

    def incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        sync = message_ext(message).get("timesync")
        if isinstance(sync, dict) and session is not None:
            session.attributes["_timesync"] = (sync, time.time_ns() // 1_000_000)
        return True

    def outgoing(self, session: ServerSession | None, reply: Message) -> bool:
        if session is None or reply.get("channel") not in (META_HANDSHAKE, META_CONNECT):
            return True
        pending = session.attributes.pop("_timesync", None)
        if pending is None:
            return True
        sync, received = pending
        now = time.time_ns() // 1_000_000
        tc, lag, offset = _number(sync.get("tc")), _number(sync.get("l")), _number(sync.get("o"))
        reply_ext(reply)["timesync"] = {
            "tc": tc,
            "ts": received,
            "p": now - received,
            "a": tc + lag + offset - received,
        }
        return True


def _number(value: object) -> int:
    """A client-sent time as an int, clamped so that any reply stays encodable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2**53:
        return int(value)
    return 0
