"""The chat store contract, on the memory store and on the Redis store (a real redis-server).

`peer` is a second view of the same data: the same object for the memory store, another
RedisChatStore (its own connections, as another node would have) on the same Redis and prefix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from chat import model as m
from chat.model import Binding, ChatSession, Event, Party
from chat.redis_store import RedisChatStore
from chat.store import ChatStore, MemoryChatStore, StoreUnavailable
from tests.support.closing import close_all
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer

StoreFactory = Callable[[], Awaitable[ChatStore]]


@pytest.fixture(params=["memory", "redis"])
async def make_store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[StoreFactory]:
    """`await make_store()`: a view of this test's store; every call after the first gives
    another view of the same data (another node)."""
    stores: list[ChatStore] = []
    prefix = f"t{uuid.uuid4().hex[:8]}"
    memory = MemoryChatStore()

    async def make() -> ChatStore:
        if request.param == "memory":
            store: ChatStore = memory
        else:
            store = RedisChatStore(redis_server.url, prefix=prefix)
        await store.start()
        stores.append(store)
        return store

    yield make
    await close_all([store.close for store in stores])


@pytest.fixture
async def store(make_store: StoreFactory) -> ChatStore:
    return await make_store()


@pytest.fixture
async def peer(store: ChatStore, make_store: StoreFactory) -> ChatStore:
    return await make_store()


def new_session(**overrides: object) -> ChatSession:
    values: dict[str, object] = {
        "chat_id": m.chat_id(),
        "service": "customer-support",
        "secure_key": m.secure_key(),
        "user_id": m.user_id(),
        "alias": "117",
        "client": Party("Ann", 1, m.CLIENT),
        "created": m.now_ms(),
        "origin": "rest",
    }
    values.update(overrides)
    return ChatSession(**values)  # type: ignore[arg-type]


def event(index: int, kind: str = m.MESSAGE, text: str | None = None, **fields: object) -> Event:
    return Event(
        type=kind,
        party=Party("Ann", 1, m.CLIENT),
        utc_time=m.now_ms(),
        index=index,
        text=f"text {index}" if text is None and kind == m.MESSAGE else text,
        **fields,  # type: ignore[arg-type]
    )


async def created(store: ChatStore, count: int = 1) -> ChatSession:
    """A stored chat whose transcript has events 1..count."""
    session = new_session()
    session.last_index = count
    await store.create(session, [event(i) for i in range(1, count + 1)])
    return session


async def test_create_then_load_gives_the_same_chat_at_version_1(
    store: ChatStore, peer: ChatStore
) -> None:
    session = new_session(
        subject="help",
        email="ann@example.com",
        user_data={"k": "v", "ü": "ß"},
        agents={"a1": Party("Bob", 2, m.AGENT)},
        external=Party("system", 3, m.EXTERNAL),
        binding=Binding("client-1", "node-a"),
        push={"push_notification_deviceid": "d"},
        extra={"files": [{"id": "f1", "size": 3}]},
        last_index=2,
    )
    first = [event(1, m.PARTICIPANT_JOINED), event(2, visible=False, message_type="x")]
    await store.create(session, first)
    assert session.version == 1
    loaded = await peer.load(session.chat_id)
    assert loaded == session
    assert loaded is not session
    assert await peer.events(session.chat_id) == first
    assert await peer.load("NoSuchChat") is None
    assert await peer.events("NoSuchChat") == []


def test_a_sessions_record_is_what_asdict_gives_and_shares_nothing_mutable() -> None:
    session = new_session(
        subject="help",
        email="ann@example.com",
        user_data={"k": "v"},
        state=m.ENDED,
        end_reason="completed",
        ended_at=5,
        client_left=True,
        agents={"a1": Party("Bob", 2, m.AGENT)},
        external=Party("system", 3, m.EXTERNAL),
        next_participant_id=4,
        last_index=7,
        read_mark=6,
        last_message_at=9,
        binding=Binding("client-1", "node-a"),
        push={"push_notification_deviceid": "d"},
        previous_secure_key="old",
        rotated_at=8,
        version=3,
        extra={"files": [{"id": "f1", "tags": ["a"]}], "v1": {"n": (1, 2)}},
    )
    expected = dataclasses.asdict(session)
    expected["client"] = session.client.to_wire()
    expected["agents"] = {"a1": session.agents["a1"].to_wire()}
    expected["external"] = session.external.to_wire() if session.external else None
    record = session.to_record()
    assert record == expected
    assert list(record) == list(expected)  # same JSON, byte for byte
    for name in ("user_data", "push", "binding", "extra"):
        assert record[name] is not expected[name]
    record["extra"]["files"][0]["tags"].append("b")
    record["user_data"]["k"] = "changed"
    assert session.extra["files"][0]["tags"] == ["a"]
    assert session.user_data == {"k": "v"}
    assert ChatSession.from_record(session.to_record()) == session
    bare = new_session()
    assert bare.to_record()["binding"] is None and bare.to_record()["push"] is None


async def test_creating_an_existing_chat_fails(store: ChatStore) -> None:
    session = await created(store)
    with pytest.raises(ValueError):
        await store.create(session, [])


async def test_a_commit_from_the_stored_version_writes_state_and_events_and_bumps_version(
    store: ChatStore, peer: ChatStore
) -> None:
    session = await created(store)
    session.state = m.ACTIVE
    session.last_index = 3
    assert await store.commit(session, 1, [event(2), event(3)]) is True
    assert session.version == 2
    loaded = await peer.load(session.chat_id)
    assert loaded is not None
    assert (loaded.version, loaded.state, loaded.last_index) == (2, m.ACTIVE, 3)
    assert [e.index for e in await peer.events(session.chat_id)] == [1, 2, 3]
    # A commit with no events is a state change all the same.
    loaded.read_mark = 3
    assert await peer.commit(loaded, 2, []) is True
    again = await store.load(session.chat_id)
    assert again is not None and (again.version, again.read_mark) == (3, 3)


async def test_a_stale_version_conflicts_and_writes_nothing(
    store: ChatStore, peer: ChatStore
) -> None:
    session = await created(store)
    mine = await store.load(session.chat_id)
    theirs = await peer.load(session.chat_id)
    assert mine is not None and theirs is not None
    theirs.subject = "theirs"
    theirs.last_index = 2
    assert await peer.commit(theirs, 1, [event(2, text="theirs")]) is True
    mine.subject = "mine"
    mine.last_index = 2
    assert await store.commit(mine, 1, [event(2, text="mine")]) is False
    assert mine.version == 1
    loaded = await store.load(session.chat_id)
    assert loaded is not None and (loaded.subject, loaded.version) == ("theirs", 2)
    assert [e.text for e in await store.events(session.chat_id)] == ["text 1", "theirs"]
    # No chat, no commit.
    assert await store.commit(new_session(), 1, []) is False


async def test_concurrent_commits_from_one_version_let_exactly_one_through(
    make_store: StoreFactory,
) -> None:
    views = [await make_store() for _ in range(4)]
    session = await created(views[0])
    loaded = [await view.load(session.chat_id) for view in views]
    for i, copy in enumerate(loaded):
        assert copy is not None
        copy.last_index = 2
        copy.subject = f"writer {i}"

    results = await asyncio.gather(
        *(
            view.commit(copy, 1, [event(2, text=f"writer {i}")])  # type: ignore[arg-type]
            for i, (view, copy) in enumerate(zip(views, loaded, strict=True))
        )
    )
    assert sorted(results) == [False, False, False, True]
    winner = results.index(True)
    events = await views[0].events(session.chat_id)
    assert [(e.index, e.text) for e in events] == [(1, "text 1"), (2, f"writer {winner}")]
    final = await views[0].load(session.chat_id)
    assert final is not None and final.subject == f"writer {winner}" and final.version == 2


async def test_events_from_an_index_are_those_with_that_index_or_more_in_order(
    store: ChatStore,
) -> None:
    session = await created(store, 5)
    hidden = event(6, m.NOTICE, visible=False, user_data={"a": "b"})
    wired = event(7, m.PARTICIPANT_LEFT)
    wired.event_attributes = {"general-properties": {"reason-for-leave": m.HOLD}}
    session.last_index = 7
    assert await store.commit(session, 1, [hidden, wired])
    assert [e.index for e in await store.events(session.chat_id, 3)] == [3, 4, 5, 6, 7]
    assert [e.index for e in await store.events(session.chat_id, 0)] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.index for e in await store.events(session.chat_id, 7)] == [7]
    assert await store.events(session.chat_id, 8) == []
    assert await store.events(session.chat_id, 6) == [hidden, wired]
    assert (await store.events(session.chat_id, 6))[0].visible is False


async def test_the_secure_key_index_opens_a_chat_until_dropped_or_expired(
    store: ChatStore, peer: ChatStore
) -> None:
    await store.index_secure_key("key-1", "chat-1")
    await store.index_secure_key("key-2", "chat-1", ttl_s=0.15)
    assert await peer.find_by_secure_key("key-1") == "chat-1"
    assert await peer.find_by_secure_key("key-2") == "chat-1"
    assert await peer.find_by_secure_key("key-3") is None
    await asyncio.sleep(0.3)
    assert await peer.find_by_secure_key("key-2") is None
    assert await peer.find_by_secure_key("key-1") == "chat-1"
    await peer.drop_secure_key("key-1")
    assert await store.find_by_secure_key("key-1") is None
    await store.drop_secure_key("never-indexed")


async def test_retire_forgets_the_chat_and_its_keys_after_the_delay(
    store: ChatStore, peer: ChatStore
) -> None:
    session = await created(store, 2)
    other = await created(store, 1)
    session.previous_secure_key = "old-key"
    assert await store.commit(session, 1, [])
    await store.index_secure_key(session.secure_key, session.chat_id)
    await store.index_secure_key("old-key", session.chat_id, ttl_s=30)
    await store.index_secure_key(other.secure_key, other.chat_id)
    await store.retire(session.chat_id, 0.2)
    retired = await peer.load(session.chat_id)
    assert retired is not None
    retired.binding = Binding("late-client", "node-b")  # a late change keeps the expiry
    assert await peer.commit(retired, 2, [])
    assert len(await peer.events(session.chat_id)) == 2
    assert await peer.find_by_secure_key(session.secure_key) == session.chat_id
    await asyncio.sleep(0.35)
    assert await peer.load(session.chat_id) is None
    assert await peer.events(session.chat_id) == []
    assert await peer.find_by_secure_key(session.secure_key) is None
    assert await peer.find_by_secure_key("old-key") is None
    assert await peer.commit(retired, 3, []) is False
    # Other chats are untouched.
    assert await peer.load(other.chat_id) is not None
    assert await peer.find_by_secure_key(other.secure_key) == other.chat_id


async def test_timers_fire_once_when_due_and_can_be_moved_and_cancelled(
    store: ChatStore, peer: ChatStore
) -> None:
    await store.schedule("a", "alert", 100)
    await store.schedule("b", "alert", 200)
    await store.schedule("a", "close", 300)
    assert await peer.claim_due(50) == []
    assert await peer.claim_due(150) == [("a", "alert")]
    assert await peer.claim_due(150) == []
    await store.schedule("b", "alert", 400)  # moved later
    assert await peer.claim_due(250) == []
    await store.cancel("a", "close")
    await store.cancel("a", "never")
    assert await peer.claim_due(350) == []
    await store.schedule("c", "alert", 1000)
    await store.schedule("c", "alert", 120)  # moved earlier
    assert await peer.claim_due(450) == [("c", "alert"), ("b", "alert")]
    assert await peer.claim_due(10_000) == []


async def test_set_timers_cancels_then_sets_a_chats_timers_in_one_call(
    store: ChatStore, peer: ChatStore
) -> None:
    await store.schedule("a", "close", 100)
    await store.schedule("b", "close", 100)
    await store.set_timers("a", {"alert": 200}, cancel=("close", "never"))
    await store.set_timers("b", {"close": 300})  # moved
    await store.set_timers("c", {})  # nothing to do
    assert await peer.claim_due(250) == [("a", "alert")]
    assert await peer.claim_due(10_000) == [("b", "close")]
    await store.set_timers("a", {"alert": 400, "close": 500})
    await store.set_timers("a", {}, cancel=("alert", "close"))
    assert await peer.claim_due(10_000) == []


async def test_claim_due_hands_out_at_most_limit_earliest_first(store: ChatStore) -> None:
    for i in range(5):
        await store.schedule(f"chat{i}", "idle-alert", 100 + 10 * (5 - i))
    assert await store.claim_due(1000, limit=2) == [
        ("chat4", "idle-alert"),
        ("chat3", "idle-alert"),
    ]
    assert len(await store.claim_due(1000)) == 3


async def test_concurrent_claims_on_two_nodes_hand_each_timer_to_exactly_one(
    make_store: StoreFactory,
) -> None:
    a, b = await make_store(), await make_store()
    timers = {(f"chat{i}", kind) for i in range(150) for kind in ("idle-alert", "idle-close")}
    for n, (chat_id, kind) in enumerate(sorted(timers)):
        await a.schedule(chat_id, kind, 1000 + n)

    async def drain(store: ChatStore) -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        for _ in range(50):
            got.extend(await store.claim_due(5000, limit=7))
            await asyncio.sleep(0)
        return got

    got_a, got_b = await asyncio.gather(drain(a), drain(b))
    assert not set(got_a) & set(got_b)
    assert len(got_a) + len(got_b) == len(timers)
    assert set(got_a) | set(got_b) == timers


# -- Redis specifics ---------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisChatStore]:
    store = RedisChatStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    await store.start()
    yield store
    await close_all([store.close])


async def test_redis_keeps_a_chat_in_one_cluster_slot(redis_store: RedisChatStore) -> None:
    chat_key = redis_store.chat_key("abc")
    transcript = redis_store.transcript_key("abc")
    assert "{abc}" in chat_key and "{abc}" in transcript and chat_key != transcript


async def test_redis_refuses_events_that_do_not_follow_the_transcript_and_writes_nothing(
    redis_store: RedisChatStore,
) -> None:
    session = await created(redis_store, 3)
    session.subject = "changed"
    with pytest.raises(ValueError):
        await redis_store.commit(session, 1, [event(3), event(4)])
    with pytest.raises(ValueError):
        await redis_store.commit(session, 1, [event(5), event(4)])
    loaded = await redis_store.load(session.chat_id)
    assert loaded is not None and loaded.version == 1 and loaded.subject is None
    assert [e.index for e in await redis_store.events(session.chat_id)] == [1, 2, 3]


async def test_redis_retire_keeps_a_rotated_keys_shorter_grace(
    redis_store: RedisChatStore, redis_server: RedisServer
) -> None:
    session = await created(redis_store)
    session.previous_secure_key = "rotated"
    assert await redis_store.commit(session, 1, [])
    await redis_store.index_secure_key("rotated", session.chat_id, ttl_s=5)
    await redis_store.index_secure_key(session.secure_key, session.chat_id)
    await redis_store.retire(session.chat_id, 300)
    client = redis_server.client()
    assert 0 < client.pttl(redis_store.secure_key_key("rotated")) <= 5000
    assert 5000 < client.pttl(redis_store.secure_key_key(session.secure_key)) <= 300_000
    assert 5000 < client.pttl(redis_store.chat_key(session.chat_id)) <= 300_000
    assert 5000 < client.pttl(redis_store.transcript_key(session.chat_id)) <= 300_000


async def test_an_unreachable_redis_is_store_unavailable() -> None:
    store = RedisChatStore(f"redis://127.0.0.1:{free_port()}/0")
    await store.start()  # only logs
    try:
        with pytest.raises(StoreUnavailable):
            await store.load("chat")
        with pytest.raises(StoreUnavailable):
            await store.commit(new_session(), 1, [])
        with pytest.raises(StoreUnavailable):
            await store.claim_due(m.now_ms())
    finally:
        await store.close()
