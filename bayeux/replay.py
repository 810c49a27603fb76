"""Durable channels and the Salesforce-style `replay` extension.

Messages published on a durable channel (`BayeuxOptions.replay_channels`) get a replay id,
increasing per channel, in `data.event.replayId`, and are kept by the engine for a retention
window. A client that negotiated replay at handshake (`ext.replay: true`) subscribes with
`ext.replay: {"/channel": id}`: `-1` for new events only, `-2` for everything retained, or an
id to get every event after it, then the live ones, in order and without duplicates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from . import protocol as p
from .channels import matching_patterns
from .extensions import Extension, message_ext, reply_ext
from .protocol import Message
from .session import Delivery

if TYPE_CHECKING:
    from .server import BayeuxServer, RequestContext
    from .session import ServerSession

REPLAY_NEW_ONLY = -1
REPLAY_ALL = -2

EventTemplate = tuple[bytes, bytes]
"""An encoded event split where its replay id goes: `head + id + tail`."""

_SLOT = "\x00replay-id\x00"
_ENCODED_SLOT = orjson.dumps(_SLOT)


def invalid_replay_id(value: object) -> str:
    """The error Salesforce sends for an id outside the retention window."""
    return (
        f"400::The replayId {value} you provided was invalid.  Please provide a valid ID, "
        "-2 to replay all events, or -1 to replay only new events."
    )


def event_template(channel: str, data: Any, ext: Any = None) -> EventTemplate:
    """Encode a durable event once, leaving a slot for the replay id the engine assigns.

    The id goes in `data.event.replayId`; data that is not an object is wrapped as
    `{"event": {...}, "payload": data}`. `event` is the first key of `data` and `replayId`
    the first of `event`, and nothing before them can hold the slot's text (channel names
    have no quotes), so the first occurrence of the slot is ours.
    """
    if isinstance(data, dict):
        event = data.get("event")
        event = {"replayId": _SLOT, **(event if isinstance(event, dict) else {})}
        event["replayId"] = _SLOT
        body = {"event": event, **{k: v for k, v in data.items() if k != "event"}}
    else:
        body = {"event": {"replayId": _SLOT}, "payload": data}
    message: Message = {"channel": channel, "data": body}
    if ext is not None:
        message["ext"] = ext
    head, _, tail = orjson.dumps(message).partition(_ENCODED_SLOT)
    return head, tail


def fill_template(template: EventTemplate, channel: str, replay_id: int) -> Delivery:
    head, tail = template
    return Delivery.from_encoded(channel, head + str(replay_id).encode() + tail, replay_id)


class ReplayExtension(Extension):
    """Negotiates replay at handshake, as Salesforce's servers do."""

    def incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        if (
            session is not None
            and message.get("channel") == p.META_HANDSHAKE
            and message_ext(message).get("replay") is True
        ):
            session.attributes["replay"] = True
        return True

    def outgoing(self, session: ServerSession | None, reply: Message) -> bool:
        if (
            session is not None
            and reply.get("channel") == p.META_HANDSHAKE
            and reply.get("successful")
            and session.attributes.get("replay")
        ):
            ext = reply_ext(reply)
            ext["replay"] = True
            ext["payload.format"] = True
        return True


class Replay:
    """The server's side of durable channels: which channels, and replay on subscribe."""

    def __init__(self, server: BayeuxServer) -> None:
        self.server = server
        self.patterns = frozenset(server.options.replay_channels)

    def is_durable(self, channel: str) -> bool:
        return bool(self.patterns) and not self.patterns.isdisjoint(matching_patterns(channel))

    async def requests(self, message: Message, patterns: list[str]) -> dict[str, int] | str:
        """The replay asked for by a subscribe, by channel; or the error to answer with."""
        asked = message_ext(message).get("replay")
        if not isinstance(asked, dict) or not self.patterns:
            return {}
        wanted: dict[str, int] = {}
        for channel in patterns:
            if channel not in asked or p.is_wildcard(channel) or not self.is_durable(channel):
                continue
            value = asked[channel]
            if isinstance(value, bool) or not isinstance(value, int):
                return invalid_replay_id(value)
            if value == REPLAY_NEW_ONLY:
                continue
            if value < REPLAY_ALL:
                return invalid_replay_id(value)
            if value >= 0:
                first, last = await self.server.engine.history_bounds(channel)
                if not first - 1 <= value <= last:
                    return invalid_replay_id(value)
            wanted[channel] = value
        return wanted

    async def track(self, session: ServerSession, channels: list[str]) -> None:
        """Note where newly subscribed durable channels stand, so a handover can resume
        them from there even if no event reached the session before it."""
        for channel in channels:
            if channel not in session.replay_positions and self._concrete_durable(channel):
                _, last = await self.server.engine.history_bounds(channel)
                session.replay_positions[channel] = last

    async def resume(self, session: ServerSession, positions: dict[str, int]) -> None:
        """After a handover: replay what the session's durable channels missed meanwhile."""
        wanted = {
            channel: position
            for channel, position in positions.items()
            if channel in session.subscriptions and self._concrete_durable(channel)
        }
        session.replay_positions.update(wanted)
        await self.deliver(session, wanted)

    def _concrete_durable(self, channel: str) -> bool:
        return not p.is_wildcard(channel) and self.is_durable(channel)

    async def deliver(self, session: ServerSession, wanted: dict[str, int]) -> None:
        """Queue each channel's retained events after the asked id, then the live events
        that arrived meanwhile and are newer, so nothing is missed or repeated."""
        for channel, after in wanted.items():
            session.hold_channel(channel)
            try:
                history = await self.server.engine.history(channel, max(after, 0))
            finally:
                held = session.release_channel(channel)
            last = history[-1].replay_id if history else after
            session.enqueue_many(history, replay=True)
            session.enqueue_many(
                d for d in held if d.replay_id is None or last is None or d.replay_id > last
            )
