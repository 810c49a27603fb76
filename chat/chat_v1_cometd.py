"""Chat API v1 over CometD, and the mobile background state (spec-chat-v1 §4-§5).

* `notify_by=comet`: every event of the chat goes to the `/_genesys` sessions of the chat's
  `gms_user` (on any node) as `{"id", "message": <chat interaction>, "tag":
  "service.chat.refresh.<service id>"}`, one message per commit.
* Background: a `/meta/disconnect` carrying `ext.transcriptPosition` from a session of that
  user marks the user's current chat away (`Away`) and tells the agent (a `Notice.Custom`,
  `_agent_timeout_notification_message`). The first agent event while away starts the
  client-timeout timer (`_client_timeout_notification` seconds, in the chat store, so any
  node fires it); when it fires, one push (`chat.newagentmessage`) carries the agent events
  since the client left, and every later agent event is pushed at once.
* Foreground: the first `/meta/connect` of a new session of that user brings the chat back
  and queues, in one `/_genesys` message, every event after `ext.transcriptPosition` (or,
  without it, after the position the client left at). Live messages arriving meanwhile are
  held and follow it, without the ones it already carries.

The hooks are a bayeux `Extension` (it reads `ext` on the meta channels), a chat observer and
a chat timer handler; the state is the chat's `V1State` (chat_v1.py), kept in the chat store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from bayeux import BayeuxServer, Delivery, Extension, RequestContext, ServerSession
from bayeux.engine import EngineUnavailable
from bayeux.extensions import message_ext
from bayeux.protocol import META_CONNECT, META_DISCONNECT, Message

from . import errors as e
from . import model as m
from .chat_v1 import (
    BACKGROUND_NOTICE,
    Away,
    V1State,
    comet_notification,
    row,
    rows,
    save_state,
    transcript_interaction,
    v1_state,
)
from .engine import SYSTEM, Cause, ChatEngine
from .gms_user import GENESYS_CHANNEL, notify_gms_user
from .model import ChatSession, Event
from .push import PushError, PushMessage, PushService
from .service_api import ServiceApi, ServiceError
from .store import StoreUnavailable

log = logging.getLogger("gms.chat.v1")

CLIENT_TIMEOUT_TIMER = "v1-client-timeout"
PUSH_TAG = "chat.newagentmessage"
PUSHABLE = frozenset(
    {
        "Notice.TypingStarted",
        "Notice.TypingStopped",
        "Notice.Joined",
        "Notice.Left",
        "Notice.PushUrl",
        "Notice.Custom",
        "Message.Text",
    }
)
DEFAULT_FILTER = "Notice.TypingStarted,Notice.TypingStopped"
FILTER_ALIASES = {
    "Notice.TypingStart": "Notice.TypingStarted",
    "Notice.TypingStop": "Notice.TypingStopped",
}
PUSH_TYPES = {
    "ios": "ios",
    "gcm": "gcm",
    "android": "gcm",
    "fcm": "fcm",
    "httpcb": "httpcb",
    "customhttp": "customhttp",
    "comet": "comet",
}
"""`push_notification_type` -> the push provider (comet: `/_genesys` of the chat's user)."""
DEFAULT_MAXSIZE = 4096
ELLIPSIS = "…"
MAX_PENDING = 10_000
CLIENT_COMETD = Cause("client", "cometd")


@dataclass(frozen=True)
class BackgroundOptions:
    """A GMS service's background options (`[service.<name>]`, and `[push]`)."""

    agent_notice: str = "customer is not online"
    client_timeout_s: float = 30
    push_message: str = "New message from Agent"
    filtered: frozenset[str] = frozenset({"Notice.TypingStarted", "Notice.TypingStopped"})

    @classmethod
    def of(cls, services: ServiceApi, name: str) -> BackgroundOptions:
        options = services.services.get(name, {})
        push = services.config.sections.get("push", {})
        filtered = options.get("_filtering_chat_events") or push.get(
            "filtering_chat_events", DEFAULT_FILTER
        )
        return cls(
            agent_notice=options.get("_agent_timeout_notification_message", cls.agent_notice),
            client_timeout_s=_seconds(options.get("_client_timeout_notification")),
            push_message=options.get("_client_timeout_notification_message", cls.push_message),
            filtered=frozenset(
                FILTER_ALIASES.get(name.strip(), name.strip())
                for name in filtered.strip('"').split(",")
                if name.strip()
            ),
        )


def _seconds(raw: str | None) -> float:
    try:
        value = float(raw) if raw is not None else BackgroundOptions.client_timeout_s
    except ValueError:
        raise ValueError(f"_client_timeout_notification: not a number: {raw!r}") from None
    return max(value, 0.0)


def position_of(value: Any) -> int | None:
    """`ext.transcriptPosition`, a number or its text; None when absent or malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip()[:18])
    return None


def fit(payload: dict[str, Any], limit: int) -> dict[str, Any]:
    """Bring the push payload within `limit` bytes: drop the oldest `lastTranscript` entries,
    then shorten the text left, then drop `lastTranscript`; `serviceId` is never cut."""

    def size() -> int:
        return len(orjson.dumps(payload))

    transcript: list[dict[str, str]] = payload.get("lastTranscript") or []
    while len(transcript) > 1 and size() > limit:
        transcript.pop(0)
    while transcript and size() > limit:
        [(kind, text)] = transcript[0].items()
        body = text.removesuffix(ELLIPSIS)
        if not body:
            break
        cut = max(len(body) - max(size() - limit, 1), 0)
        transcript[0] = {kind: body[:cut] + ELLIPSIS}
    if size() > limit:
        payload.pop("lastTranscript", None)
    return payload


class ChatV1Comet(Extension):
    """The `/_genesys` notifier, the background-state extension and the push timer."""

    def __init__(
        self, bayeux: BayeuxServer, chat: ChatEngine, services: ServiceApi, push: PushService
    ) -> None:
        self.bayeux = bayeux
        self.chat = chat
        self.services = services
        self.push = push
        self.with_index = chat.config.enable_fast_chat_transcript_refresh
        self._pending: set[asyncio.Task[None]] = set()

    # -- the extension: /meta/disconnect and the first /meta/connect ----------------------
    def incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        user = session.attributes.get("gms_user") if session is not None else None
        if session is None or not isinstance(user, str):
            return True
        channel = message.get("channel")
        position = position_of(message_ext(message).get("transcriptPosition"))
        if channel == META_DISCONNECT and position is not None:
            self._spawn(self._go_background(user, position))
        elif channel == META_CONNECT and not session.connected:
            session.hold_channel(GENESYS_CHANNEL)
            self._spawn(self._come_back(session, user, position))
        return True

    async def _go_background(self, user: str, position: int) -> None:
        chat_id = await self._current_chat(user)
        if chat_id is None:
            return

        def change(session: ChatSession) -> list[Event]:
            state = v1_state(session)
            if state is None or not state.comet or session.ended:
                return []
            if state.away is not None:  # away already: only the position moves
                state.away.position = position
                save_state(session, state)
                return []
            state.away = Away(position)
            save_state(session, state)
            text = BackgroundOptions.of(self.services, state.service_name).agent_notice
            return [self.chat.event(m.CUSTOM_NOTICE, session.client, text, BACKGROUND_NOTICE)]

        try:
            await self.chat.change(chat_id, change, CLIENT_COMETD)
        except e.ChatError as error:
            log.info("chat %s: not marked away (%s)", chat_id, error)

    async def _come_back(self, session: ServerSession, user: str, position: int | None) -> None:
        """Replay what the returning client missed, then release what arrived meanwhile."""
        replay: tuple[dict[str, Any], int] | None = None
        try:
            chat_id = await self._current_chat(user)
            if chat_id is not None:
                replay = await self._missed(chat_id, position)
        except e.ChatError as error:
            log.info("user %s: nothing replayed (%s)", user, error)
        finally:
            held = session.release_channel(GENESYS_CHANNEL)
            if replay is not None:
                session.deliver(GENESYS_CHANNEL, replay[0])
                held = [d for d in held if not _covered(d, replay[0]["tag"], replay[1])]
            session.enqueue_many(held)

    async def _missed(
        self, chat_id: str, position: int | None
    ) -> tuple[dict[str, Any], int] | None:
        """The `/_genesys` data with the events after `position` (or after where the client
        left), and the last position it carries; the chat is no longer away."""
        session = await self.chat.load(chat_id, allow_ended=True)
        state = v1_state(session)
        if state is None or not state.comet:
            return None
        if state.away is not None:
            position = state.away.position if position is None else position
            session = await self._present(chat_id)
        if position is None:
            return None
        events = await self.chat.transcript(session, position + 1)
        shown = rows(
            session, [ev for ev in events if ev.index <= session.last_index], self.with_index
        )
        if not shown:
            return None
        message = transcript_interaction(session, session.last_index, shown)
        return comet_notification(state.service_id, message), session.last_index

    async def _present(self, chat_id: str) -> ChatSession:
        def change(session: ChatSession) -> list[Event]:
            state = v1_state(session)
            if state is not None and state.away is not None:
                state.away = None
                save_state(session, state)
            return []

        outcome = await self.chat.change(chat_id, change, CLIENT_COMETD, allow_ended=True)
        await self._timer(self.chat.store.cancel(chat_id, CLIENT_TIMEOUT_TIMER))
        return outcome.session

    async def _current_chat(self, user: str) -> str | None:
        try:
            return await self.services.sessions.current_chat(user)
        except ServiceError as error:
            log.warning("user %s: current chat unknown: %s", user, error.message)
            return None

    # -- the observer: /_genesys notifications and pushes while away ----------------------
    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        state = v1_state(session)
        if state is None or not events:
            return
        if state.comet and state.gms_user:
            shown = rows(session, events, self.with_index)
            if shown:
                message = transcript_interaction(session, session.last_index, shown)
                data = comet_notification(state.service_id, message)
                await self._notify(state.gms_user, data, session.chat_id)
        away = state.away
        if away is None:
            return
        options = BackgroundOptions.of(self.services, state.service_name)
        pushable = [ev for ev in events if self._pushable(session, ev, options)]
        if not pushable:
            return
        if away.pushed:
            self._spawn(self._push(session, state, pushable))
        elif not away.timer:
            self._spawn(self._start_timer(session.chat_id, options.client_timeout_s))

    def _pushable(self, session: ChatSession, event: Event, options: BackgroundOptions) -> bool:
        shown = row(session, event, False)
        return (
            shown is not None
            and event.party.type == m.AGENT
            and shown[0] in PUSHABLE
            and shown[0] not in options.filtered
        )

    async def _start_timer(self, chat_id: str, delay_s: float) -> None:
        """Schedule first, then record it: a node dying in between leaves a timer that the
        next agent event moves, never a chat that waits for a timer nobody set."""
        due = m.now_ms() + int(delay_s * 1000)
        if not await self._timer(self.chat.store.schedule(chat_id, CLIENT_TIMEOUT_TIMER, due)):
            return

        def change(session: ChatSession) -> list[Event]:
            state = v1_state(session)
            if state is not None and state.away is not None and not state.away.timer:
                state.away.timer = True
                save_state(session, state)
            return []

        try:
            await self.chat.change(chat_id, change, SYSTEM, allow_ended=True)
        except e.ChatError as error:
            log.info("chat %s: client timeout not recorded (%s)", chat_id, error)

    async def client_timeout(self, chat_id: str) -> None:
        """The timer fired: push the agent events since the client left (once)."""
        since: int | None = None

        def change(session: ChatSession) -> list[Event]:
            nonlocal since
            state = v1_state(session)
            if state is None or state.away is None or state.away.pushed:
                return []
            state.away.pushed = True
            save_state(session, state)
            since = state.away.position
            return []

        try:
            outcome = await self.chat.change(chat_id, change, SYSTEM, allow_ended=True)
            if since is None:
                return
            session = outcome.session
            state = v1_state(session)
            assert state is not None
            options = BackgroundOptions.of(self.services, state.service_name)
            events = await self.chat.transcript(session, since + 1)
            pushable = [
                ev
                for ev in events
                if ev.index <= session.last_index and self._pushable(session, ev, options)
            ]
            if pushable:
                await self._push(session, state, pushable)
        except e.ChatError as error:
            log.info("chat %s: no client-timeout push (%s)", chat_id, error)

    async def _push(self, session: ChatSession, state: V1State, events: list[Event]) -> None:
        keys = state.push or {}
        kind = PUSH_TYPES.get(keys.get("push_notification_type", "").strip().lower())
        device = keys.get("push_notification_deviceid", "")
        if kind is None or not device:
            log.info("chat %s: no push target for the background state", session.chat_id)
            return
        options = BackgroundOptions.of(self.services, state.service_name)
        payload: dict[str, Any] = {"message": options.push_message, "serviceId": state.service_id}
        if kind != "ios":  # 256-byte payloads: the content is never included for iOS
            entries = [r for ev in events if (r := row(session, ev, False)) is not None]
            payload["lastTranscript"] = [{r[0]: r[2]} for r in entries]
        limit = _size(keys.get("push_notification_maxsize"))
        payload = fit(payload, limit)
        if kind == "comet":
            if state.gms_user:
                data = comet_notification(state.service_id, payload, PUSH_TAG)
                await self._notify(state.gms_user, data, session.chat_id)
            return
        last = payload.get("lastTranscript") or [{"": options.push_message}]
        message = PushMessage(
            type=kind,
            device_id=device,
            message=orjson.dumps(payload).decode(),
            title=options.push_message,
            body=next(iter(last[-1].values())),
            debug=keys.get("push_notification_debug", "").lower() == "true",
            content_type="application/json",
        )
        provider = keys.get("push_notification_provider") or None
        try:
            await self.push.send(message, provider, PUSH_TAG)
        except PushError as error:
            log.warning("chat %s: background push failed: %s", session.chat_id, error)

    async def _notify(self, user: str, data: dict[str, Any], chat_id: str) -> None:
        try:
            await notify_gms_user(self.bayeux, user, data)
        except EngineUnavailable as error:
            log.warning("chat %s: /_genesys notification not sent: %s", chat_id, error)

    # -- housekeeping --------------------------------------------------------------------
    async def _timer(self, operation: Coroutine[Any, Any, None]) -> bool:
        try:
            await operation
        except StoreUnavailable as error:
            log.warning("chat timer not updated: %s", error)
            return False
        return True

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if len(self._pending) >= MAX_PENDING:
            log.warning("chat v1 backlog full: dropping background work")
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self) -> None:
        """Wait for the background work started so far (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)


def _covered(delivery: Delivery, tag: str, last: int) -> bool:
    """Whether a held `/_genesys` message is one of this chat's that the replay carries."""
    data = delivery.message.get("data")
    if not isinstance(data, dict) or data.get("tag") != tag:
        return False
    message = data.get("message")
    position = position_of(message.get("transcriptPosition")) if isinstance(message, dict) else None
    return position is not None and position <= last


def _size(raw: str | None) -> int:
    try:
        return max(int(str(raw)), 1) if raw is not None else DEFAULT_MAXSIZE
    except ValueError:
        return DEFAULT_MAXSIZE


def setup(
    bayeux: BayeuxServer, chat: ChatEngine, services: ServiceApi, push: PushService
) -> ChatV1Comet:
    comet = ChatV1Comet(bayeux, chat, services, push)
    bayeux.add_extension(comet)
    chat.observers.append(comet)
    chat.timer_handlers[CLIENT_TIMEOUT_TIMER] = comet.client_timeout
    return comet
