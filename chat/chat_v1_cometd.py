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
  without it, after the position the client left at, or after a network loss the position
  estimated from when the user's last session expired, as GMS does). The replay and the
  live messages never overlap (see `ChatV1Comet.send`).

The hooks are a bayeux `Extension` (it reads `ext` on the meta channels), a chat observer and
a chat timer handler; the state is the chat's `V1State` (chat_v1.py), kept in the chat store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
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
    PUSH_TYPES,
    TAG_PREFIX,
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
from .notification_api import JSON as JSON_MEDIA
from .notification_api import Event as Notification
from .notification_api import NotificationApi
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
DEFAULT_MAXSIZE = 4096
ELLIPSIS = "…"
MAX_PENDING = 10_000
CLIENT_COMETD = Cause("client", "cometd")
RETURNED = "gms_v1_returned"
"""Session attribute: the first `/meta/connect`'s replay is done (`/_genesys` flows)."""
FENCE = "gms_v1_fence"
"""Session attribute: chat tag -> the last position the replay covered."""


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
        self,
        bayeux: BayeuxServer,
        chat: ChatEngine,
        services: ServiceApi,
        push: PushService,
        notifications: NotificationApi,
    ) -> None:
        self.bayeux = bayeux
        self.chat = chat
        self.services = services
        self.push = push
        self.notifications = notifications
        self.with_index = chat.config.enable_fast_chat_transcript_refresh
        self._pending: set[asyncio.Task[None]] = set()
        self._turns: dict[str, _Turn] = {}

    # -- the extension: /meta/disconnect and the first /meta/connect ----------------------
    def send(self, session: ServerSession, delivery: Delivery) -> Delivery | None:
        """Keep the replay and the live `/_genesys` messages of a returning client apart.

        Until its first `/meta/connect` has been answered with the replay, a session of a
        `gms_user` holds every `/_genesys` message (from the moment the handshake bound it to
        the user, so an event committed between the handshake and that connect is held too).
        The replay then records, per chat, the last position it covers (`FENCE`), and every
        message of that chat at or below it is dropped: held ones, and ones that reach this
        node late (another node's delivery through Redis may arrive after the replay was
        read). A chat message at position P carries only events up to P, so dropping it loses
        nothing the replay does not carry, whatever the order of events."""
        if delivery.channel != GENESYS_CHANNEL:
            return delivery
        attributes = session.attributes
        if "gms_user" in attributes and not attributes.get(RETURNED):
            session.hold_channel(GENESYS_CHANNEL)  # enqueue() puts it aside
            return delivery
        return None if _fenced(attributes.get(FENCE), delivery) else delivery

    def incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        user = session.attributes.get("gms_user") if session is not None else None
        if session is None or not isinstance(user, str):
            return True
        channel = message.get("channel")
        position = position_of(message_ext(message).get("transcriptPosition"))
        if channel == META_DISCONNECT and position is not None:
            self._spawn(self._in_turn(user, lambda: self._go_background(user, position)))
        elif channel == META_CONNECT and not session.connected:
            session.hold_channel(GENESYS_CHANNEL)
            self._spawn(self._in_turn(user, lambda: self._come_back(session, user, position)))
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
        """Replay what the returning client missed, then release what arrived meanwhile
        (without what the replay carries: `send`)."""
        replay = Replay(None, {})
        try:
            chat_id = await self._current_chat(user)
            if chat_id is not None:
                replay = await self._missed(chat_id, position)
        except e.ChatError as error:
            log.info("user %s: nothing replayed (%s)", user, error)
        finally:
            session.attributes[FENCE] = replay.fence
            session.attributes[RETURNED] = True
            held = session.release_channel(GENESYS_CHANNEL)
            if replay.data is not None:
                # Straight into the queue: `send` would take the replay for a stale message.
                session.enqueue(Delivery({"channel": GENESYS_CHANNEL, "data": replay.data}))
            session.enqueue_many(d for d in held if not _fenced(replay.fence, d))

    async def _missed(self, chat_id: str, position: int | None) -> Replay:
        """The `/_genesys` data with the events after `position` (or after where the client
        left), and how far it covers the chat; the chat is no longer away."""
        session = await self.chat.load(chat_id, allow_ended=True)
        state = v1_state(session)
        if state is None or not state.comet:
            return Replay(None, {})
        if state.away is not None or state.lost_at is not None:
            if position is None:
                position = (
                    state.away.position
                    if state.away is not None
                    else await self._estimate(session, state.lost_at or 0)
                )
            session = await self._present(chat_id)
        if position is None:
            return Replay(None, {})
        tag = TAG_PREFIX + state.service_id
        events = await self.chat.transcript(session, position + 1)
        shown = rows(
            session, [ev for ev in events if ev.index <= session.last_index], self.with_index
        )
        if not shown:
            # The client has everything up to `position` (never beyond what the chat has).
            return Replay(None, {tag: min(position, session.last_index)})
        message = transcript_interaction(session, session.last_index, shown)
        data = comet_notification(state.service_id, message)
        return Replay(data, {tag: session.last_index})

    async def _estimate(self, session: ChatSession, lost_at: int) -> int:
        """The position a client had when its connection was lost at `lost_at`: the last
        event a full `utcTime` unit older (an event of that second may not have reached it:
        better shown twice, the index tells the client, than lost)."""
        slack = 1000 if self.chat.config.utc_time_resolution == "s" else 1
        events = await self.chat.transcript(session, 1)
        return max((ev.index for ev in events if ev.utc_time + slack <= lost_at), default=1)

    def session_removed(self, session: ServerSession, reason: str) -> None:
        """A session of a `gms_user` expired (no `/meta/disconnect`: the network was lost, or
        the app killed): remember when, for the estimate above. GMS does not treat this as
        the background state (no agent notice, no pushes): only `/meta/disconnect` is."""
        user = session.attributes.get("gms_user")
        if reason != "expired" or not isinstance(user, str):
            return
        idle_ms = int((asyncio.get_running_loop().time() - session.last_seen) * 1000)
        lost_at = m.now_ms() - idle_ms
        self._spawn(self._in_turn(user, lambda: self._lost(user, lost_at)))

    async def _lost(self, user: str, lost_at: int) -> None:
        chat_id = await self._current_chat(user)
        if chat_id is None:
            return

        def change(session: ChatSession) -> list[Event]:
            state = v1_state(session)
            if state is None or not state.comet or session.ended or state.away is not None:
                return []
            state.lost_at = lost_at
            save_state(session, state)
            return []

        try:
            await self.chat.change(chat_id, change, SYSTEM)
        except e.ChatError as error:
            log.info("chat %s: connection loss not recorded (%s)", chat_id, error)

    async def _present(self, chat_id: str) -> ChatSession:
        def change(session: ChatSession) -> list[Event]:
            state = v1_state(session)
            if state is not None and (state.away is not None or state.lost_at is not None):
                state.away = state.lost_at = None
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
        """Push the agent events to the chat's device (`push_notification_*`), else to its
        `subscriptionID`'s target (any Notification API delivery type)."""
        keys = state.push or {}
        if keys.get("push_notification_deviceid"):
            await self._push_to_device(session, state, keys, events)
        elif state.subscription_id:
            await self._push_to_subscription(session, state, state.subscription_id, events)
        else:
            log.info("chat %s: no push target for the background state", session.chat_id)

    def _payload(
        self,
        session: ChatSession,
        state: V1State,
        events: list[Event],
        kind: str,
        language: str | None,
    ) -> dict[str, Any]:
        """`{message, serviceId, lastTranscript}`, the message in the push language (the
        option's text is a localization message id when the file has it), within
        `push_notification_maxsize`."""
        options = BackgroundOptions.of(self.services, state.service_name)
        message = self.notifications.localizer.localize(options.push_message, language)
        payload: dict[str, Any] = {"message": message, "serviceId": state.service_id}
        if kind != "ios":  # 256-byte payloads: the content is never included for iOS
            entries = [r for ev in events if (r := row(session, ev, False)) is not None]
            payload["lastTranscript"] = [{r[0]: r[2]} for r in entries]
        return fit(payload, _size((state.push or {}).get("push_notification_maxsize")))

    async def _push_to_device(
        self, session: ChatSession, state: V1State, keys: dict[str, str], events: list[Event]
    ) -> None:
        kind = PUSH_TYPES.get(keys.get("push_notification_type", "").strip().lower())
        if kind is None:
            log.info("chat %s: no push type for the background state", session.chat_id)
            return
        language = keys.get("push_notification_language") or None
        payload = self._payload(session, state, events, kind, language)
        if kind == "comet":
            if state.gms_user:
                data = comet_notification(state.service_id, payload, PUSH_TAG)
                await self._notify(state.gms_user, data, session.chat_id)
            return
        last = payload.get("lastTranscript") or [{"": payload["message"]}]
        message = PushMessage(
            type=kind,
            device_id=keys["push_notification_deviceid"],
            message=orjson.dumps(payload).decode(),
            title=payload["message"],
            body=next(iter(last[-1].values())),
            debug=keys.get("push_notification_debug", "").lower() == "true",
            content_type="application/json",
        )
        provider = keys.get("push_notification_provider") or None
        try:
            await self.push.send(message, provider, PUSH_TAG)
        except PushError as error:
            log.warning("chat %s: background push failed: %s", session.chat_id, error)

    async def _push_to_subscription(
        self, session: ChatSession, state: V1State, subscription_id: str, events: list[Event]
    ) -> None:
        try:
            target = await self.notifications.store.get(subscription_id)
        except StoreUnavailable as error:
            log.warning("chat %s: subscription not read: %s", session.chat_id, error)
            return
        if target is None:
            log.info("chat %s: subscription %s is gone", session.chat_id, subscription_id)
            return
        language = (state.push or {}).get("push_notification_language") or target.language
        payload = self._payload(session, state, events, target.type, language)
        notification = Notification(tag=PUSH_TAG, message=payload, media=JSON_MEDIA)
        for reason in await self.notifications.deliver(notification, [target]):
            log.warning("chat %s: background push failed: %s", session.chat_id, reason)

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

    async def _in_turn(self, user: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run one user's connect, disconnect and expiry work in the order the messages came
        (a returning session's connect must not clear the background state that a later
        `/meta/disconnect` set, because its store round trips happened to finish last)."""
        turn = self._turns.get(user)
        if turn is None:
            turn = self._turns[user] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                await work()
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[user]

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


@dataclass
class _Turn:
    """One user's queue of background work on this node; dropped when empty."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class Replay:
    """What a returning client is sent first, and per chat tag the last position the client
    has with it (live messages at or below it are duplicates)."""

    data: dict[str, Any] | None
    fence: dict[str, int]


def _fenced(fence: Any, delivery: Delivery) -> bool:
    """Whether a `/_genesys` message is a chat message the client already has."""
    if not fence:
        return False
    data = delivery.message.get("data")
    if not isinstance(data, dict):
        return False
    last = fence.get(data.get("tag"))
    message = data.get("message")
    position = position_of(message.get("transcriptPosition")) if isinstance(message, dict) else None
    return last is not None and position is not None and position <= last


def _size(raw: str | None) -> int:
    try:
        return max(int(str(raw)), 1) if raw is not None else DEFAULT_MAXSIZE
    except ValueError:
        return DEFAULT_MAXSIZE


def setup(
    bayeux: BayeuxServer,
    chat: ChatEngine,
    services: ServiceApi,
    push: PushService,
    notifications: NotificationApi,
) -> ChatV1Comet:
    comet = ChatV1Comet(bayeux, chat, services, push, notifications)
    bayeux.add_extension(comet)
    bayeux.on_session_removed(comet.session_removed)
    chat.observers.append(comet)
    chat.timer_handlers[CLIENT_TIMEOUT_TIMER] = comet.client_timeout
    return comet
