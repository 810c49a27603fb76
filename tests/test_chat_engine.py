"""The chat engine, on the memory store and on the Redis store (a real redis-server).

`make_engine()` starts an engine; each further call starts another node on the same store
(for Redis: its own RedisChatStore on the same Redis and prefix, as another process would).
Timers run every few milliseconds and idle timeouts are tenths of seconds, so the file is fast.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from chat import errors as e
from chat import model as m
from chat.config import ChatConfig, ServiceConfig
from chat.engine import CLIENT_REST, SYSTEM, Cause, ChatEngine
from chat.model import ChatSession, Event
from chat.redis_store import RedisChatStore
from chat.store import ChatStore, MemoryChatStore
from tests.support.closing import close_all
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer

SERVICE = "customer-support"
TIMER_PERIOD = 0.01
EngineFactory = Callable[..., Awaitable[ChatEngine]]


@dataclass
class Recorder:
    """A ChatObserver that keeps every call."""

    calls: list[tuple[ChatSession, list[Event], Cause]] = field(default_factory=list)

    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        self.calls.append((session, list(events), cause))

    def events(self, chat_id: str | None = None) -> list[tuple[Event, Cause]]:
        return [
            (event, cause)
            for session, events, cause in self.calls
            if chat_id is None or session.chat_id == chat_id
            for event in events
        ]

    def types(self, chat_id: str) -> list[str]:
        return [event.type for event, _ in self.events(chat_id)]


def config(secure_key_grace_s: float = 30, **service: Any) -> ChatConfig:
    """One service, SERVICE, with these `[chat.<service>]` options."""
    return ChatConfig(
        services={SERVICE: ServiceConfig(SERVICE, **service)},
        secure_key_grace_s=secure_key_grace_s,
    )


@pytest.fixture(params=["memory", "redis"])
async def make_engine(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[EngineFactory]:
    """`await make_engine(config=None, timer_period=TIMER_PERIOD)`: a started engine with a
    Recorder as `engine.observers[0]`; engines of one test share their chats."""
    engines: list[ChatEngine] = []
    prefix = f"t{uuid.uuid4().hex[:8]}"
    memory = MemoryChatStore()

    async def make(
        chat_config: ChatConfig | None = None, timer_period: float = TIMER_PERIOD
    ) -> ChatEngine:
        store: ChatStore = (
            memory if request.param == "memory" else RedisChatStore(redis_server.url, prefix)
        )
        engine = ChatEngine(chat_config or config(), store, timer_period=timer_period)
        engine.observers.append(Recorder())
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    await close_all([engine.close for engine in engines])


@pytest.fixture
async def engine(make_engine: EngineFactory) -> ChatEngine:
    return await make_engine()


def recorder(engine: ChatEngine) -> Recorder:
    observer = engine.observers[0]
    assert isinstance(observer, Recorder)
    return observer


async def new_chat(engine: ChatEngine, **fields: Any) -> ChatSession:
    values: dict[str, Any] = {"nickname": "Ann", "first_name": None, "last_name": None}
    values.update(fields)
    return (await engine.request_chat(SERVICE, **values)).session


async def stored(engine: ChatEngine, chat_id: str) -> list[Event]:
    return await engine.store.events(chat_id)


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.01)


def codes(info: pytest.ExceptionInfo[e.ChatError]) -> list[int]:
    return info.value.codes


# -- request chat --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nickname", "first", "last", "shown"),
    [("Ann", None, None, "Ann"), ("Ann", "A", "B", "Ann"), (None, "Ann", "Lee", "Ann Lee")],
)
async def test_the_client_is_named_by_nickname_or_by_first_and_last_name(
    engine: ChatEngine, nickname: str | None, first: str | None, last: str | None, shown: str
) -> None:
    session = await new_chat(engine, nickname=nickname, first_name=first, last_name=last)
    assert session.client == m.Party(shown, 1, m.CLIENT)


@pytest.mark.parametrize(
    ("nickname", "first", "last", "code"),
    [
        (None, None, None, e.NICKNAME_MISSING),
        ("", None, None, e.NICKNAME_MISSING),
        (None, None, "Lee", e.FIRST_NAME_MISSING),
        (None, "Ann", None, e.LAST_NAME_MISSING),
        (None, "Ann", "", e.LAST_NAME_MISSING),
    ],
)
async def test_a_client_without_a_name_is_refused(
    engine: ChatEngine, nickname: str | None, first: str | None, last: str | None, code: int
) -> None:
    with pytest.raises(e.ChatError) as info:
        await new_chat(engine, nickname=nickname, first_name=first, last_name=last)
    assert (codes(info), info.value.http) == ([code], 400)


async def test_a_bad_email_and_a_missing_required_subject_are_reported_together(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(config(subject_required=True))
    with pytest.raises(e.ChatError) as info:
        await new_chat(engine, email="not-an-address")
    assert (codes(info), info.value.http) == ([e.EMAIL_INVALID, e.SUBJECT_MISSING], 400)
    with pytest.raises(e.ChatError) as info:
        await new_chat(engine, email="ann@example.com")
    assert codes(info) == [e.SUBJECT_MISSING]
    session = await new_chat(engine, email="ann@example.com", subject="Help")
    assert (session.email, session.subject) == ("ann@example.com", "Help")


async def test_an_unknown_service_is_306_not_found(engine: ChatEngine) -> None:
    with pytest.raises(e.ChatError) as info:
        await engine.request_chat("nope", nickname="Ann", first_name=None, last_name=None)
    assert (codes(info), info.value.http) == ([e.SERVICE_UNKNOWN], 404)


async def test_a_new_chat_starts_with_the_clients_join_at_index_1(engine: ChatEngine) -> None:
    outcome = await engine.request_chat(
        SERVICE, nickname="Ann", first_name=None, last_name=None, user_data={"k": "v"}
    )
    session = outcome.session
    [joined] = outcome.events
    assert (joined.index, joined.type, joined.party) == (1, m.PARTICIPANT_JOINED, session.client)
    assert joined.to_wire()["from"] == {"nickname": "Ann", "participantId": 1, "type": "Client"}
    assert (session.state, session.next_position, session.user_data) == (m.QUEUED, 2, {"k": "v"})
    assert await stored(engine, session.chat_id) == [joined]
    assert (await engine.by_secure_key(session.secure_key)).chat_id == session.chat_id
    found = await engine.authenticate(session.chat_id, session.user_id, session.secure_key)
    assert found.chat_id == session.chat_id
    with pytest.raises(e.ChatError) as info:
        await engine.authenticate(session.chat_id, "WRONG", session.secure_key)
    assert codes(info) == [e.SESSION_NOT_FOUND]
    with pytest.raises(e.ChatError):
        await engine.authenticate(session.chat_id, session.user_id, "wrong-key")
    with pytest.raises(e.ChatError):
        await engine.by_secure_key("wrong-key")


# -- indexes and positions -----------------------------------------------------------------


async def test_indexes_increase_by_one_and_hidden_events_take_one_too(engine: ChatEngine) -> None:
    session = await new_chat(engine)
    chat = session.chat_id
    await engine.agent_join(chat, "a1", "Bob")
    await engine.agent_event(chat, "a1", m.MESSAGE, "hello")
    await engine.agent_event(chat, "a1", m.NOTICE, "internal", visible=False)
    outcome = await engine.client_event(chat, m.MESSAGE, "hi", message_type="text")
    assert [ev.index for ev in outcome.events] == [5]
    assert [ev.index for ev in await stored(engine, chat)] == [1, 2, 3, 4, 5]
    visible = await engine.transcript(outcome.session, 1)
    assert [ev.index for ev in visible] == [1, 2, 3, 5]
    assert [ev.index for ev in await engine.transcript(outcome.session, 4)] == [5]
    assert await engine.transcript(outcome.session, 6) == []
    assert outcome.session.last_index == 5
    assert outcome.session.next_position == 6
    assert visible[-1].to_wire()["messageType"] == "text"
    assert visible[2].to_wire()["messageType"] is None


async def test_next_position_is_1_once_the_chat_ended(engine: ChatEngine) -> None:
    session = await new_chat(engine)
    await engine.client_event(session.chat_id, m.MESSAGE, "hi")
    outcome = await engine.complete(session.chat_id)
    assert outcome.session.last_index == 3
    assert outcome.session.next_position == 1
    ended = await engine.load(session.chat_id, allow_ended=True)
    assert ended.next_position == 1 and ended.ended


# -- agents --------------------------------------------------------------------------------


async def test_every_agent_join_gets_a_new_participant_id(engine: ChatEngine) -> None:
    chat = (await new_chat(engine)).chat_id
    first = await engine.agent_join(chat, "a1", "Bob")
    assert [ev.party for ev in first.events] == [m.Party("Bob", 2, m.AGENT)]
    assert first.session.state == m.ACTIVE
    assert (await engine.agent_join(chat, "a1", "Bob")).events == []  # already in
    await engine.agent_leave(chat, "a1", m.HOLD)
    again = await engine.agent_join(chat, "a1", "Bob")
    assert [ev.party.participant_id for ev in again.events] == [3]
    other = await engine.agent_join(chat, "a2", "Cy")
    assert [ev.party.participant_id for ev in other.events] == [4]
    assert again.session.state == m.ACTIVE


@pytest.mark.parametrize(("reason", "state"), [(m.HOLD, m.ON_HOLD), (m.TRANSFER, m.TRANSFERRING)])
async def test_leaving_for_hold_or_transfer_keeps_the_chat_with_the_reason_on_the_event(
    engine: ChatEngine, reason: str, state: str
) -> None:
    chat = (await new_chat(engine)).chat_id
    await engine.agent_join(chat, "a1", "Bob")
    outcome = await engine.agent_leave(chat, "a1", reason)
    [left] = outcome.events
    assert left.type == m.PARTICIPANT_LEFT and left.party.nickname == "Bob"
    assert left.to_wire()["eventAttributes"] == {"general-properties": {"reason-for-leave": reason}}
    assert (outcome.session.state, outcome.session.ended) == (state, False)
    assert outcome.session.next_position == 4
    await engine.client_event(chat, m.MESSAGE, "still here")  # the chat goes on
    [stored_left] = [ev for ev in await stored(engine, chat) if ev.index == 3]
    assert stored_left.event_attributes == left.event_attributes


async def test_the_last_agent_leaving_without_reason_ends_the_chat_after_the_client_leaves(
    engine: ChatEngine,
) -> None:
    chat = (await new_chat(engine)).chat_id
    await engine.agent_join(chat, "a1", "Bob")
    await engine.agent_join(chat, "a2", "Cy")
    first = await engine.agent_leave(chat, "a1")
    assert [ev.party.nickname for ev in first.events] == ["Bob"]
    assert "eventAttributes" not in first.events[0].to_wire()
    assert not first.session.ended
    last = await engine.agent_leave(chat, "a2")
    assert [(ev.index, ev.type, ev.party.type) for ev in last.events] == [
        (5, m.PARTICIPANT_LEFT, m.AGENT),
        (6, m.PARTICIPANT_LEFT, m.CLIENT),
    ]
    assert (last.session.ended, last.session.end_reason, last.session.next_position) == (
        True,
        "agent-left",
        1,
    )
    with pytest.raises(e.ChatError) as info:
        await engine.client_event(chat, m.MESSAGE, "anyone?")
    assert codes(info) == [e.SESSION_NOT_FOUND]
    with pytest.raises(ValueError):
        await engine.agent_leave(chat, "a2", "LUNCH")


async def test_complete_makes_every_agent_then_the_client_leave(engine: ChatEngine) -> None:
    session = await new_chat(engine)
    chat = session.chat_id
    await engine.agent_join(chat, "a1", "Bob")
    await engine.agent_join(chat, "a2", "Cy")
    outcome = await engine.complete(chat)
    assert [(ev.type, ev.party.nickname) for ev in outcome.events] == [
        (m.PARTICIPANT_LEFT, "Bob"),
        (m.PARTICIPANT_LEFT, "Cy"),
        (m.PARTICIPANT_LEFT, "Ann"),
    ]
    assert (outcome.session.ended, outcome.session.agents) == (True, {})
    # Readable to the end (refresh), closed to anything else.
    ended = await engine.authenticate(chat, session.user_id, session.secure_key, True)
    assert len(await engine.transcript(ended, 1)) == 6
    assert (await engine.by_secure_key(session.secure_key, allow_ended=True)).ended
    with pytest.raises(e.ChatError):
        await engine.authenticate(chat, session.user_id, session.secure_key)
    with pytest.raises(e.ChatError):
        await engine.complete(chat)


async def test_after_a_client_disconnect_its_credentials_open_nothing(engine: ChatEngine) -> None:
    session = await new_chat(engine)
    outcome = await engine.client_disconnect(session.chat_id)
    [left] = outcome.events
    assert (left.index, left.type, left.party) == (2, m.PARTICIPANT_LEFT, session.client)
    assert outcome.session.ended and outcome.session.client_left
    for allow_ended in (False, True):
        with pytest.raises(e.ChatError) as info:
            await engine.authenticate(
                session.chat_id, session.user_id, session.secure_key, allow_ended
            )
        assert codes(info) == [e.SESSION_NOT_FOUND]
        with pytest.raises(e.ChatError) as info:
            await engine.by_secure_key(session.secure_key, allow_ended)
        assert codes(info) == [e.SESSION_NOT_FOUND]
    with pytest.raises(e.ChatError):
        await engine.client_disconnect(session.chat_id)


# -- client operations ---------------------------------------------------------------------


async def test_a_nickname_update_names_the_client_in_later_events_only(engine: ChatEngine) -> None:
    chat = (await new_chat(engine)).chat_id
    await engine.client_event(chat, m.MESSAGE, "before")
    updated = await engine.update_nickname(chat, "Annie")
    [notice] = updated.events
    assert (notice.type, notice.text, notice.party) == (
        m.NICKNAME_UPDATED,
        "Annie",
        m.Party("Annie", 1, m.CLIENT),
    )
    await engine.client_event(chat, m.MESSAGE, "after")
    names = [(ev.text, ev.party.nickname) for ev in await stored(engine, chat)]
    assert names == [(None, "Ann"), ("before", "Ann"), ("Annie", "Annie"), ("after", "Annie")]


async def test_update_data_merges_without_an_event(engine: ChatEngine) -> None:
    chat = (await new_chat(engine, user_data={"a": "1", "b": "2"})).chat_id
    outcome = await engine.update_data(chat, {"b": "3", "c": "4"})
    assert outcome.events == []
    assert (await engine.load(chat)).user_data == {"a": "1", "b": "3", "c": "4"}
    assert (await engine.load(chat)).last_index == 1
    with pytest.raises(e.ChatError) as info:
        await engine.update_data(chat, {})
    assert codes(info) == [e.USER_DATA_MISSING]


async def test_a_read_receipt_names_an_existing_index_and_never_moves_back(
    engine: ChatEngine,
) -> None:
    chat = (await new_chat(engine)).chat_id
    await engine.client_event(chat, m.MESSAGE, "one")
    await engine.client_event(chat, m.MESSAGE, "two")
    for bad in (0, -1, 4):
        with pytest.raises(e.ChatError) as info:
            await engine.read_receipt(chat, bad)
        assert (codes(info), info.value.http) == ([e.TRANSCRIPT_POSITION_INVALID], 400)
    assert (await engine.read_receipt(chat, 3)).session.read_mark == 3
    assert (await engine.read_receipt(chat, 1)).session.read_mark == 3
    assert (await engine.load(chat)).last_index == 3


async def test_a_rotated_secure_key_leaves_the_old_one_valid_for_the_grace_period(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(config(secure_key_grace_s=0.3))
    session = await new_chat(engine)
    old = session.secure_key
    rotated = await engine.rotate_secure_key(session.chat_id)
    new = rotated.secure_key
    assert new != old and rotated.previous_secure_key == old
    for key in (old, new):
        assert (await engine.by_secure_key(key)).chat_id == session.chat_id
        assert (await engine.authenticate(session.chat_id, session.user_id, key)).secure_key == new
    await asyncio.sleep(0.45)
    for check in (
        engine.by_secure_key(old),
        engine.authenticate(session.chat_id, session.user_id, old),
    ):
        with pytest.raises(e.ChatError) as info:
            await check
        assert codes(info) == [e.SESSION_NOT_FOUND]
    assert (await engine.by_secure_key(new)).chat_id == session.chat_id
    await engine.authenticate(session.chat_id, session.user_id, new)


async def test_external_content_comes_from_an_external_party_that_never_joins(
    engine: ChatEngine,
) -> None:
    chat = (await new_chat(engine)).chat_id
    await engine.agent_join(chat, "a1", "Bob")
    first = await engine.external_event(chat, "Your call matters")
    second = await engine.external_event(chat, "Still here", kind=m.NOTICE)
    other = await engine.external_event(chat, "Hi", nickname="bot")
    [a], [b], [c] = first.events, second.events, other.events
    assert a.to_wire()["from"] == {"nickname": "system", "participantId": 3, "type": "External"}
    assert (b.type, b.party) == (m.NOTICE, a.party)
    assert c.party == m.Party("bot", 4, m.EXTERNAL)
    joins = [ev.party.type for ev in await stored(engine, chat) if ev.type == m.PARTICIPANT_JOINED]
    assert joins == [m.CLIENT, m.AGENT]


# -- idle control ----------------------------------------------------------------------------


async def wait_for_type(engine: ChatEngine, chat: str, kind: str, timeout: float = 3.0) -> None:
    async def seen() -> bool:
        return kind in recorder(engine).types(chat)

    await eventually(seen, timeout)


async def test_an_idle_chat_gets_an_alert_then_is_closed(make_engine: EngineFactory) -> None:
    engine = await make_engine(config(idle_alert_timeout_s=0.15, idle_close_timeout_s=0.15))
    chat = (await new_chat(engine)).chat_id
    await engine.client_event(chat, m.MESSAGE, "hello")
    await wait_for_type(engine, chat, m.IDLE_CLOSE)
    events = await stored(engine, chat)
    assert [ev.type for ev in events] == [
        m.PARTICIPANT_JOINED,
        m.MESSAGE,
        m.IDLE_ALERT,
        m.IDLE_CLOSE,
    ]
    alert, close = events[2:]
    assert (alert.text, close.text) == (
        "Are you still there?",
        "The chat was closed for inactivity.",
    )
    assert alert.party == close.party == m.Party("system", 2, m.EXTERNAL)
    ended = await engine.load(chat, allow_ended=True)
    assert (ended.ended, ended.end_reason, ended.next_position) == (True, "idle", 1)
    causes = [cause for ev, cause in recorder(engine).events(chat) if ev.type != m.MESSAGE]
    assert causes[-2:] == [SYSTEM, SYSTEM]


async def test_idle_close_alone_closes_a_chat_where_nobody_ever_wrote(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(config(idle_close_timeout_s=0.15))
    chat = (await new_chat(engine)).chat_id
    await wait_for_type(engine, chat, m.IDLE_CLOSE)
    assert [ev.type for ev in await stored(engine, chat)] == [m.PARTICIPANT_JOINED, m.IDLE_CLOSE]


async def test_messages_reset_the_idle_timers(make_engine: EngineFactory) -> None:
    engine = await make_engine(config(idle_alert_timeout_s=0.3, idle_close_timeout_s=0.2))
    chat = (await new_chat(engine)).chat_id
    await engine.agent_join(chat, "a1", "Bob")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(6):  # a message every 0.1 s for 0.6 s: twice the alert timeout
        await asyncio.sleep(0.1)
        if i % 2:
            await engine.client_event(chat, m.MESSAGE, f"client {i}")
        else:
            await engine.agent_event(chat, "a1", m.MESSAGE, f"agent {i}")
    assert loop.time() - started >= 0.6
    assert m.IDLE_ALERT not in recorder(engine).types(chat)
    # A typing notice is not a message: it does not keep the chat alive.
    await engine.client_event(chat, m.TYPING_STARTED, "hel")
    await wait_for_type(engine, chat, m.IDLE_ALERT)
    assert loop.time() - started >= 0.6 + 0.3 - 0.05
    assert m.IDLE_CLOSE not in recorder(engine).types(chat)
    await engine.client_event(chat, m.MESSAGE, "I am here")  # cancels the close
    await asyncio.sleep(0.25)
    assert m.IDLE_CLOSE not in recorder(engine).types(chat)
    assert not (await engine.load(chat)).ended


async def test_an_idle_timer_that_fires_too_early_is_set_again_from_the_last_message(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(config(idle_alert_timeout_s=0.3, idle_close_timeout_s=5))
    chat = (await new_chat(engine)).chat_id
    await engine.client_event(chat, m.MESSAGE, "hello")
    sent = asyncio.get_running_loop().time()
    # As a re-arm by an older, concurrent message (on another node) would leave it:
    await engine.store.schedule(chat, "idle-alert", m.now_ms())
    await asyncio.sleep(0.1)
    assert m.IDLE_ALERT not in recorder(engine).types(chat)
    await wait_for_type(engine, chat, m.IDLE_ALERT)
    assert asyncio.get_running_loop().time() - sent >= 0.3 - 0.02


async def test_the_end_of_a_chat_cancels_its_idle_timers(make_engine: EngineFactory) -> None:
    engine = await make_engine(config(idle_alert_timeout_s=0.1, idle_close_timeout_s=0.1))
    chat = (await new_chat(engine)).chat_id
    await engine.client_event(chat, m.MESSAGE, "bye")
    await engine.client_disconnect(chat)
    assert await engine.store.claim_due(m.now_ms() + 10_000) == []


async def test_without_idle_control_a_timer_left_by_an_older_config_does_nothing(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(config())  # no idle timeouts: messages set no idle timers
    chat = (await new_chat(engine)).chat_id
    await engine.client_event(chat, m.MESSAGE, "hello")
    assert await engine.store.claim_due(m.now_ms() + 10_000) == []
    # Timers armed when the service had idle control (another node, or before a restart):
    await engine.store.set_timers(chat, {"idle-alert": m.now_ms(), "idle-close": m.now_ms()})
    await asyncio.sleep(0.1)
    assert not (await engine.load(chat)).ended
    assert recorder(engine).types(chat) == [m.PARTICIPANT_JOINED, m.MESSAGE]
    assert await engine.store.claim_due(m.now_ms() + 10_000) == []  # fired, not re-armed


# -- several nodes ---------------------------------------------------------------------------


async def test_two_nodes_writing_one_chat_at_once_lose_nothing(make_engine: EngineFactory) -> None:
    a, b = await make_engine(), await make_engine()
    chat = (await new_chat(a)).chat_id
    await b.agent_join(chat, "a1", "Bob")

    async def client(i: int) -> m.Event:
        return (await a.client_event(chat, m.MESSAGE, f"client {i}")).events[0]

    async def agent(i: int) -> m.Event:
        return (await b.agent_event(chat, "a1", m.MESSAGE, f"agent {i}")).events[0]

    results = await asyncio.gather(*(client(i) for i in range(50)), *(agent(i) for i in range(50)))
    events = await stored(a, chat)
    assert [ev.index for ev in events] == list(range(1, 103))
    texts = {ev.text for ev in events if ev.type == m.MESSAGE}
    assert texts == {f"client {i}" for i in range(50)} | {f"agent {i}" for i in range(50)}
    assert sorted(ev.index for ev in results) == list(range(3, 103))
    assert (await b.load(chat)).last_index == 102
    # Each node told its observers about its own commits, once each.
    seen = [ev.index for node in (a, b) for ev, _ in recorder(node).events(chat)]
    assert sorted(seen) == list(range(1, 103))


async def test_a_node_acts_on_the_chat_as_stored_not_as_it_last_saw_it(
    make_engine: EngineFactory,
) -> None:
    """A node remembers the chats it changed (no read per change on Redis); when another
    node changed one since, it still decides on the chat as stored: an agent who joined
    elsewhere may speak here, one who left elsewhere may not, and nothing is lost."""
    a, b = await make_engine(), await make_engine()
    chat = (await new_chat(a)).chat_id
    await a.client_event(chat, m.MESSAGE, "hello")  # a now remembers the chat
    await b.agent_join(chat, "a1", "Bob")
    said = await a.agent_event(chat, "a1", m.MESSAGE, "hi, Bob here")
    assert said.events[0].index == 4
    await b.agent_leave(chat, "a1", m.TRANSFER)
    with pytest.raises(e.ChatError):
        await a.agent_event(chat, "a1", m.MESSAGE, "still here?")
    await a.client_event(chat, m.MESSAGE, "anyone?")
    assert [(ev.index, ev.text) for ev in await stored(b, chat) if ev.type == m.MESSAGE] == [
        (2, "hello"),
        (4, "hi, Bob here"),
        (6, "anyone?"),
    ]


async def test_a_timer_set_on_a_node_that_died_fires_on_another(
    make_engine: EngineFactory,
) -> None:
    idle = config(idle_alert_timeout_s=0.2, idle_close_timeout_s=0.1)
    a = await make_engine(idle, timer_period=60)  # a's timer loop never gets a turn
    b = await make_engine(idle)
    chat = (await new_chat(a)).chat_id
    await a.client_event(chat, m.MESSAGE, "hello")
    await a.close()  # the node dies
    await wait_for_type(b, chat, m.IDLE_CLOSE)
    assert recorder(b).types(chat) == [m.IDLE_ALERT, m.IDLE_CLOSE]
    assert (await b.load(chat, allow_ended=True)).end_reason == "idle"


# -- observers and failures ------------------------------------------------------------------


async def test_observers_see_every_committed_event_once_with_its_cause(
    engine: ChatEngine,
) -> None:
    cometd = Cause("client", "cometd", "client-1")
    session = (
        await engine.request_chat(
            SERVICE, nickname="Ann", first_name=None, last_name=None, cause=cometd
        )
    ).session
    chat = session.chat_id
    await engine.client_event(chat, m.MESSAGE, "hi", cause=cometd)
    await engine.client_event(chat, m.TYPING_STARTED)
    await engine.update_data(chat, {"k": "v"})
    await engine.agent_join(chat, "a1", "Bob")
    await engine.agent_event(chat, "a1", m.NOTICE, "internal", visible=False)
    await engine.external_event(chat, "from the strategy")
    await engine.rotate_secure_key(chat)
    await engine.agent_leave(chat, "a1")
    seen = [(ev.index, ev.type, cause) for ev, cause in recorder(engine).events(chat)]
    agent = Cause("agent")
    assert seen == [
        (1, m.PARTICIPANT_JOINED, cometd),
        (2, m.MESSAGE, cometd),
        (3, m.TYPING_STARTED, CLIENT_REST),
        (4, m.PARTICIPANT_JOINED, agent),
        (5, m.NOTICE, agent),
        (6, m.MESSAGE, Cause("external")),
        (7, m.PARTICIPANT_LEFT, agent),
        (8, m.PARTICIPANT_LEFT, agent),
    ]
    assert recorder(engine).calls[-1][0].ended


async def test_a_failing_observer_does_not_fail_the_operation(engine: ChatEngine) -> None:
    class Broken:
        async def chat_events(
            self, session: ChatSession, events: list[Event], cause: Cause
        ) -> None:
            raise RuntimeError("observer down")

    engine.observers.append(Broken())
    chat = (await new_chat(engine)).chat_id
    outcome = await engine.client_event(chat, m.MESSAGE, "hi")
    assert outcome.events[0].index == 2
    assert [ev.index for ev, _ in recorder(engine).events(chat)] == [1, 2]


async def test_an_unreachable_store_is_a_transient_error() -> None:
    engine = ChatEngine(config(), RedisChatStore(f"redis://127.0.0.1:{free_port()}/0"))
    await engine.start()
    try:
        with pytest.raises(e.ChatError) as info:
            await new_chat(engine)
        assert (codes(info), info.value.status) == ([e.INTERNAL_ERROR], 1)
        with pytest.raises(e.ChatError) as info:
            await engine.by_secure_key("key")
        assert info.value.status == 1
    finally:
        await engine.close()
