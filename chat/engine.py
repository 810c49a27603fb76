"""The chat engine: chat sessions, their transcripts, participants and timers.

API surfaces (Chat v2 REST and CometD, Chat v1, the agent API) call the engine; the engine
changes a chat through the store (atomically, with retries on conflict) and then tells its
observers about the new events, which deliver them (to the CometD client wherever it is
connected, to agents, to push providers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bayeux.tasks import cancel_and_wait

from . import errors as e
from . import model as m
from .config import ChatConfig, ServiceConfig
from .model import Binding, ChatSession, Event, Party
from .store import ChatStore, StoreUnavailable

log = logging.getLogger("gms.chat")

IDLE_ALERT_TIMER = "idle-alert"
IDLE_CLOSE_TIMER = "idle-close"
MAX_ATTEMPTS = 32
RETRY_BACKOFF_S = 0.002
"""First pause after a conflict with another node; it doubles (with jitter) up to 50 ms."""
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SYSTEM_NICKNAME = "system"

Change = Callable[[ChatSession], list[Event]]
TimerHandler = Callable[[str], Awaitable[None]]
"""Called with the timer's subject when it is due; it must not raise."""


@dataclass(frozen=True)
class Cause:
    """Who made a change: observers use it, e.g. not to echo a client's own event back as an
    unsolicited notification when its operation's reply already carries it."""

    actor: str
    """`client`, `agent`, `external` or `system`."""
    transport: str | None = None
    """For client changes: `rest`, `cometd` or `chat-ntf`."""
    client_id: str | None = None
    """The Bayeux client whose CometD operation made the change."""
    route: Any = None
    """For agent changes: the chat's routing record as the operation checked it just before
    (the agent API does), so that the router need not read it again; the engine ignores it."""
    check: Callable[[ChatSession], None] | None = None
    """What the chat must still be for the change (it raises a ChatError otherwise): run on
    the chat actually changed, so an operation that checked a copy this node kept (see
    `by_secure_key`) holds on the chat the commit's version check vouches for."""


CLIENT_REST = Cause("client", "rest")
BY_AGENT = Cause("agent")
SYSTEM = Cause("system")


@dataclass
class Outcome:
    """A committed change: the chat as it now is, and the events it added."""

    session: ChatSession
    events: list[Event]


class ChatObserver(Protocol):
    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        """New events were committed (the session may have ended with them)."""


class ChatEngine:
    def __init__(self, config: ChatConfig, store: ChatStore, timer_period: float = 0.25) -> None:
        self.config = config
        self.store = store
        self.observers: list[ChatObserver] = []
        self._timer_period = timer_period
        self._timer_task: asyncio.Task[None] | None = None
        self._locks: dict[str, _ChatLock] = {}
        self.timer_handlers: dict[str, TimerHandler] = {}
        """Timer kind -> handler, for timers other modules keep in the chat store (the agent
        router's offers and logouts): they are claimed by one node like the chat's own."""

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        self._timer_task = asyncio.create_task(self._timers_forever(), name="chat-timers")

    async def close(self) -> None:
        task, self._timer_task = self._timer_task, None
        if task is not None:
            await cancel_and_wait(task)
        await self.store.close()

    def service(self, name: str) -> ServiceConfig:
        service = self.config.service(name)
        if service is None:
            raise e.service_unknown(name)
        return service

    # -- finding a chat ------------------------------------------------------------------
    async def by_secure_key(
        self, key: str, allow_ended: bool = False, recent: bool = False
    ) -> ChatSession:
        """The chat a CometD or chat-ntf secure key opens (249 if none, or if it ended and
        `allow_ended` is false). `recent`: the copy this node last saw may do (no read), for
        an operation that checks again on the chat it changes (`Cause.check`); a copy that
        does not pass is read again."""
        chat_id = await self._store(self.store.find_by_secure_key(key))
        if chat_id is None:
            raise e.session_not_found()
        if recent:
            with contextlib.suppress(e.ChatError):
                copy = await self._store(self.store.load_for_change(chat_id))
                return self._opened_by(_open(copy, allow_ended), key)
        return self._opened_by(await self.load(chat_id, allow_ended), key)

    def _opened_by(self, session: ChatSession, key: str) -> ChatSession:
        if not self.key_opens(session, key):  # a store may remember a key past its grace
            raise e.session_not_found()
        return session

    async def authenticate(
        self, chat_id: str, user_id: str, key: str, allow_ended: bool = False
    ) -> ChatSession:
        """A REST request's chat: its userId and secureKey must match (249 otherwise)."""
        session = await self.load(chat_id, allow_ended=True)
        if session.user_id != user_id or not self.key_opens(session, key):
            raise e.session_not_found()
        if (session.ended and not allow_ended) or session.client_left:
            raise e.session_not_found()
        return session

    async def get(self, chat_id: str) -> ChatSession | None:
        """A chat as stored, whatever its state (for the agent side); None if unknown."""
        session: ChatSession | None = await self._store(self.store.load(chat_id))
        return session

    async def load(self, chat_id: str, allow_ended: bool = False) -> ChatSession:
        return _open(await self._store(self.store.load(chat_id)), allow_ended)

    def key_opens(self, session: ChatSession, key: str) -> bool:
        if key == session.secure_key:
            return True
        grace_ms = self.config.secure_key_grace_s * 1000
        return (
            key == session.previous_secure_key
            and session.rotated_at is not None
            and m.now_ms() - session.rotated_at <= grace_ms
        )

    async def transcript(self, session: ChatSession, position: int) -> list[Event]:
        """Visible events with index >= position (0 is handled by the API surface)."""
        events = await self._store(self.store.events(session.chat_id, max(position, 1)))
        return [event for event in events if event.visible]

    # -- client operations ---------------------------------------------------------------
    async def request_chat(
        self,
        service_name: str,
        *,
        nickname: str | None,
        first_name: str | None,
        last_name: str | None,
        subject: str | None = None,
        email: str | None = None,
        user_data: dict[str, str] | None = None,
        cause: Cause = CLIENT_REST,
        binding: Binding | None = None,
        push: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        join_text: str | None = None,
    ) -> Outcome:
        """Create a chat with the client's ParticipantJoined (index 1); `extra` is the
        per-chat state of the API surface that created it (Chat v1's, for instance);
        `join_text` replaces the standard join notice (Chat v1's `message`)."""
        service = self.service(service_name)
        problems = request_problems(service, nickname, first_name, last_name, subject, email)
        if problems:
            raise e.invalid(*problems)
        display = nickname or f"{first_name} {last_name}"
        session = ChatSession(
            chat_id=m.chat_id(),
            service=service_name,
            secure_key=m.secure_key(),
            user_id=m.user_id(),
            alias=self.config.alias,
            client=Party(display, 1, m.CLIENT),
            created=m.now_ms(),
            origin=cause.transport or "rest",
            subject=subject,
            email=email,
            user_data=dict(user_data or {}),
            binding=binding,
            push=push,
            last_message_at=m.now_ms(),
            extra=dict(extra or {}),
        )
        joined = self.event(m.PARTICIPANT_JOINED, session.client, join_text)
        self._number(session, [joined])
        await self._store(self.store.create(session, [joined]))
        await self._store(self.store.index_secure_key(session.secure_key, session.chat_id))
        async with self._lock(session.chat_id):
            await self._notify(session, [joined], cause)
        # Idle counts from the start, message or not.
        await self._maintain(session, [self.event(m.MESSAGE, session.client)])
        return Outcome(session, [joined])

    async def client_event(
        self,
        chat_id: str,
        kind: str,
        text: str | None = None,
        message_type: str | None = None,
        cause: Cause = CLIENT_REST,
    ) -> Outcome:
        """A Message, TypingStarted/Stopped, PushUrl or CustomNotice from the client."""

        def change(session: ChatSession) -> list[Event]:
            return [self.event(kind, session.client, text, message_type)]

        return await self.change(chat_id, change, cause)

    async def update_nickname(
        self, chat_id: str, nickname: str, cause: Cause = CLIENT_REST
    ) -> Outcome:
        def change(session: ChatSession) -> list[Event]:
            session.client = Party(nickname, session.client.participant_id, m.CLIENT)
            return [self.event(m.NICKNAME_UPDATED, session.client, nickname)]

        return await self.change(chat_id, change, cause)

    async def update_data(
        self, chat_id: str, data: dict[str, str], cause: Cause = CLIENT_REST
    ) -> Outcome:
        """Merge attached data (add and overwrite, never delete); no transcript event."""
        if not data:
            raise e.invalid(e.USER_DATA_MISSING)

        def change(session: ChatSession) -> list[Event]:
            session.user_data.update(data)
            return []

        return await self.change(chat_id, change, cause)

    async def read_receipt(
        self, chat_id: str, position: int, cause: Cause = CLIENT_REST
    ) -> Outcome:
        """Move the client's read mark (never backwards); no client-visible event."""

        def change(session: ChatSession) -> list[Event]:
            if position < 1 or position >= session.next_position:
                raise e.invalid(e.TRANSCRIPT_POSITION_INVALID)
            session.read_mark = max(session.read_mark, position)
            return []

        return await self.change(chat_id, change, cause)

    async def client_disconnect(
        self, chat_id: str, cause: Cause = CLIENT_REST, text: str | None = None
    ) -> Outcome:
        """The client leaves: its ParticipantLeft (with `text` in place of the standard
        notice, if given) ends the chat and its credentials die."""

        def change(session: ChatSession) -> list[Event]:
            session.client_left = True
            left = [self.event(m.PARTICIPANT_LEFT, session.client, text)]
            self._end(session, "client-disconnect")
            return left

        return await self.change(chat_id, change, cause)

    async def bind(
        self, chat_id: str, binding: Binding | None, push: dict[str, str] | None = None
    ) -> ChatSession:
        """Point the chat's notifications at a CometD client (the newest wins), and refresh its
        push binding when one is given. Works on an ended chat too (to read the end)."""

        def change(session: ChatSession) -> list[Event]:
            session.binding = binding
            if push is not None:
                session.push = push
            return []

        return (await self.change(chat_id, change, Cause("client", "cometd"), True)).session

    # -- agent side ----------------------------------------------------------------------
    async def agent_join(self, chat_id: str, agent_id: str, nickname: str) -> Outcome:
        def change(session: ChatSession) -> list[Event]:
            if agent_id in session.agents:
                return []
            party = session.new_party(nickname, m.AGENT)
            session.agents[agent_id] = party
            session.state = m.ACTIVE
            return [self.event(m.PARTICIPANT_JOINED, party)]

        return await self.change(chat_id, change, BY_AGENT)

    async def agent_leave(self, chat_id: str, agent_id: str, reason: str | None = None) -> Outcome:
        """An agent leaves; HOLD and TRANSFER keep the chat open, and the last agent leaving
        without a reason ends it (the client's ParticipantLeft follows the agent's)."""
        if reason not in (None, m.HOLD, m.TRANSFER):
            raise ValueError(f"unknown reason for leave {reason!r}")

        def change(session: ChatSession) -> list[Event]:
            party = session.agents.pop(agent_id, None)
            if party is None:
                return []
            attributes = {"general-properties": {"reason-for-leave": reason}} if reason else None
            events = [self.event(m.PARTICIPANT_LEFT, party, attributes=attributes)]
            if reason == m.HOLD:
                session.state = m.ON_HOLD
            elif reason == m.TRANSFER:
                session.state = m.TRANSFERRING
            elif not session.agents:
                events.append(self.event(m.PARTICIPANT_LEFT, session.client))
                self._end(session, "agent-left")
            return events

        return await self.change(chat_id, change, BY_AGENT)

    async def agent_event(
        self,
        chat_id: str,
        agent_id: str,
        kind: str,
        text: str | None = None,
        *,
        visible: bool = True,
        user_data: dict[str, str] | None = None,
        message_type: str | None = None,
        cause: Cause = BY_AGENT,
    ) -> Outcome:
        """A Message, typing, PushUrl, CustomNotice or Notice from a joined agent; `visible`
        False makes an internal event the client never sees (it still takes an index)."""

        def change(session: ChatSession) -> list[Event]:
            party = session.agents.get(agent_id)
            if party is None:
                raise e.session_not_found()
            event = self.event(kind, party, text, message_type, user_data=user_data)
            event.visible = visible
            return [event]

        return await self.change(chat_id, change, cause)

    async def external_event(
        self, chat_id: str, text: str, kind: str = m.MESSAGE, nickname: str = SYSTEM_NICKNAME
    ) -> Outcome:
        """Content from routing or a strategy, as the External party (no visible join)."""

        def change(session: ChatSession) -> list[Event]:
            return [self.event(kind, self._external(session, nickname), text)]

        return await self.change(chat_id, change, Cause("external"))

    async def complete(self, chat_id: str) -> Outcome:
        """The agent side closes the chat: every agent leaves, then the client."""

        def change(session: ChatSession) -> list[Event]:
            events = [self.event(m.PARTICIPANT_LEFT, p) for p in session.agents.values()]
            session.agents.clear()
            events.append(self.event(m.PARTICIPANT_LEFT, session.client))
            self._end(session, "completed")
            return events

        return await self.change(chat_id, change, BY_AGENT)

    async def rotate_secure_key(self, chat_id: str) -> ChatSession:
        """Give the chat a new key; the old one keeps working for `secure_key_grace_s`."""
        new_key = m.secure_key()

        def change(session: ChatSession) -> list[Event]:
            session.previous_secure_key = session.secure_key
            session.secure_key = new_key
            session.rotated_at = m.now_ms()
            return []

        outcome = await self.change(chat_id, change, SYSTEM)
        await self._store(self.store.index_secure_key(new_key, chat_id))
        old = outcome.session.previous_secure_key
        if old is not None:
            await self._store(
                self.store.index_secure_key(old, chat_id, self.config.secure_key_grace_s)
            )
        return outcome.session

    # -- the change loop -----------------------------------------------------------------
    async def change(
        self, chat_id: str, change: Change, cause: Cause, allow_ended: bool = False
    ) -> Outcome:
        """Apply `change` to the chat and commit it with its new events, retrying when another
        node changed the chat meanwhile; then tell the observers.

        Changes to one chat made on this node take turns, so they never conflict with each
        other; only another node's commit can make one retry."""
        backoff = RETRY_BACKOFF_S
        for _ in range(MAX_ATTEMPTS):
            async with self._lock(chat_id):
                try:
                    recent = await self._store(self.store.load_for_change(chat_id))
                    session, before, events = _applied(change, recent, allow_ended, cause)
                except e.ChatError:  # the copy this node kept may be stale: ask the store
                    stored = await self._store(self.store.load(chat_id))
                    session, before, events = _applied(change, stored, allow_ended, cause)
                if not events and session.to_record() == before:
                    return Outcome(session, [])  # nothing to write
                self._number(session, events)
                if await self._store(self.store.commit(session, before["version"], events)):
                    # Still holding the chat: observers see its events in index order.
                    await self._notify(session, events, cause)
                    break
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, 0.05)
        else:
            raise e.transient(f"chat {chat_id} is changing too fast; retry")
        await self._maintain(session, events)
        return Outcome(session, events)

    @contextlib.asynccontextmanager
    async def _lock(self, chat_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(chat_id)
        if lock is None:
            lock = self._locks[chat_id] = _ChatLock()
        lock.users += 1
        try:
            async with lock.lock:
                yield
        finally:
            lock.users -= 1
            if not lock.users:
                del self._locks[chat_id]

    def _number(self, session: ChatSession, events: list[Event]) -> None:
        for event in events:
            session.last_index += 1
            event.index = session.last_index
            if event.type == m.MESSAGE and event.visible:
                # Not event.utc_time: that may be cut to the second, and idle timers are not.
                session.last_message_at = m.now_ms()

    async def _notify(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        """Tell every observer. They run while the chat is held, so they must not change the
        same chat themselves (they deliver, or start background work)."""
        for observer in self.observers:
            try:
                await observer.chat_events(session, events, cause)
            except Exception:
                log.exception("chat observer %r failed", observer)

    async def _maintain(self, session: ChatSession, events: list[Event]) -> None:
        """Timers and retirement after a commit. The change is already made, so a failure
        here is logged, not reported to the client (who would retry and repeat it)."""
        try:
            if session.ended and any(ev.type in _ENDING for ev in events):
                retention = self.config.ended_session_retention_s
                await self.store.retire(session.chat_id, retention)
                idle_timers = (IDLE_ALERT_TIMER, IDLE_CLOSE_TIMER)
                await self.store.set_timers(session.chat_id, {}, cancel=idle_timers)
            elif any(ev.type == m.MESSAGE and ev.visible for ev in events):
                await self._arm_idle_timers(session)
        except (StoreUnavailable, e.ChatError):
            log.warning("chat %s: timers or retirement not updated", session.chat_id, exc_info=True)

    def event(
        self,
        kind: str,
        party: Party,
        text: str | None = None,
        message_type: str | None = None,
        *,
        user_data: dict[str, str] | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Event:
        return Event(
            type=kind,
            party=party,
            utc_time=event_time(self.config),
            text=text,
            message_type=message_type,
            user_data=user_data,
            event_attributes=attributes,
        )

    def _external(self, session: ChatSession, nickname: str) -> Party:
        if session.external is None or session.external.nickname != nickname:
            session.external = session.new_party(nickname, m.EXTERNAL)
        return session.external

    def _end(self, session: ChatSession, reason: str) -> None:
        session.state = m.ENDED
        session.end_reason = reason
        session.ended_at = m.now_ms()

    async def _store(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except StoreUnavailable as exc:
            reference = secrets.token_hex(8).upper()
            log.warning("chat store unavailable (referenceId %s): %s", reference, exc)
            raise e.transient(reference) from exc

    # -- idle control --------------------------------------------------------------------
    async def _arm_idle_timers(self, session: ChatSession) -> None:
        service = self.config.service(session.service)
        if service is None:
            return
        alert_ms = int(service.idle_alert_timeout_s * 1000)
        close_ms = int(service.idle_close_timeout_s * 1000)
        if alert_ms > 0:  # the alert comes first, and then arms the close
            due = {IDLE_ALERT_TIMER: session.last_message_at + alert_ms}
            cancel: tuple[str, ...] = (IDLE_CLOSE_TIMER,)
        elif close_ms > 0:
            due, cancel = {IDLE_CLOSE_TIMER: session.last_message_at + close_ms}, ()
        else:
            return  # no idle control on this service: no timer to move (see `_fire`)
        await self._store(self.store.set_timers(session.chat_id, due, cancel))

    async def _timers_forever(self) -> None:
        while True:
            await asyncio.sleep(self._timer_period)
            try:
                for chat_id, kind in await self.store.claim_due(m.now_ms()):
                    await self._fire(chat_id, kind)
            except Exception:
                log.exception("chat timers failed")

    async def _fire(self, chat_id: str, kind: str) -> None:
        handler = self.timer_handlers.get(kind)
        if handler is not None:
            await handler(chat_id)
            return
        try:
            if kind == IDLE_ALERT_TIMER:
                await self._idle_alert(chat_id)
            elif kind == IDLE_CLOSE_TIMER:
                await self._idle_close(chat_id)
        except e.ChatError:
            pass  # the chat ended or vanished meanwhile

    async def _idle_alert(self, chat_id: str) -> None:
        def change(session: ChatSession) -> list[Event]:
            service = self.service(session.service)
            idle_for = m.now_ms() - session.last_message_at
            if service.idle_alert_timeout_s <= 0 or idle_for < service.idle_alert_timeout_s * 1000:
                return []  # a message came in meanwhile (or a timer older than the config)
            party = self._external(session, SYSTEM_NICKNAME)
            return [self.event(m.IDLE_ALERT, party, service.idle_alert_text)]

        outcome = await self.change(chat_id, change, SYSTEM)
        service = self.service(outcome.session.service)
        if not outcome.events:
            # Not idle after all: set the timers from the last message again (the message
            # may have armed them before a concurrent, older one re-armed them earlier).
            await self._arm_idle_timers(outcome.session)
        elif service.idle_close_timeout_s > 0:
            due = m.now_ms() + int(service.idle_close_timeout_s * 1000)
            await self._store(self.store.schedule(chat_id, IDLE_CLOSE_TIMER, due))

    async def _idle_close(self, chat_id: str) -> None:
        def change(session: ChatSession) -> list[Event]:
            service = self.service(session.service)
            limit = (service.idle_alert_timeout_s + service.idle_close_timeout_s) * 1000
            if service.idle_close_timeout_s <= 0 or m.now_ms() - session.last_message_at < limit:
                return []  # as in `_idle_alert`: messages only cancel timers there are
            party = self._external(session, SYSTEM_NICKNAME)
            close = self.event(m.IDLE_CLOSE, party, service.idle_close_text)
            self._end(session, "idle")
            return [close]

        outcome = await self.change(chat_id, change, SYSTEM)
        if not outcome.events:
            await self._arm_idle_timers(outcome.session)  # not idle after all, as above


_ENDING = {m.PARTICIPANT_LEFT, m.IDLE_CLOSE}



def _open(session: ChatSession | None, allow_ended: bool) -> ChatSession:
    """A chat its client may still use (249 when unknown, left, or ended unless allowed)."""
    if session is None or session.client_left or (session.ended and not allow_ended):
        raise e.session_not_found()
    return session


def _applied(
    change: Change, session: ChatSession | None, allow_ended: bool, cause: Cause
) -> tuple[ChatSession, dict[str, Any], list[Event]]:
    """The chat changed, its record from before, and the change's new events."""
    session = _open(session, allow_ended)
    if cause.check is not None:
        cause.check(session)
    before = session.to_record()
    return session, before, change(session)


class _ChatLock:
    """Serializes one node's changes to one chat; dropped when nobody waits."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def request_problems(
    service: ServiceConfig,
    nickname: str | None,
    first_name: str | None,
    last_name: str | None,
    subject: str | None,
    email: str | None,
) -> list[int]:
    """Every reason a chat request is invalid (all are reported at once)."""
    problems = name_problems(nickname, first_name, last_name)
    if email and not EMAIL.match(email):
        problems.append(e.EMAIL_INVALID)
    if service.subject_required and not subject:
        problems.append(e.SUBJECT_MISSING)
    return problems


def event_time(config: ChatConfig) -> int:
    """An event's `utcTime`: epoch ms, cut to whole seconds by default (as GMS shows them)."""
    utc = m.now_ms()
    return utc - utc % 1000 if config.utc_time_resolution == "s" else utc


def name_problems(nickname: str | None, first_name: str | None, last_name: str | None) -> list[int]:
    """GMS's rule: a nickname, or both first and last name (161, 102, 103 otherwise)."""
    if nickname or (first_name and last_name):
        return []
    if first_name:
        return [e.LAST_NAME_MISSING]
    if last_name:
        return [e.FIRST_NAME_MISSING]
    return [e.NICKNAME_MISSING]
