"""Chat API v2 over CometD (spec-chat-v2 §5) through the Bayeux pipeline: one test per
conformance item 62-82 (named `test_NN_...`), then the finer points of the module.

The application is built by `chat.app.create_app`; clients are `PipelineClient`s that never
subscribe (GMS clients may only add a listener), and read what the server queued for them with
a non-waiting /meta/connect. The agent side is driven through the chat engine.
"""

from __future__ import annotations

import base64
import copy
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bayeux import BayeuxOptions, BayeuxServer, Engine
from bayeux.app import BAYEUX_SERVER
from bayeux.redis_engine import RedisEngine
from chat.app import CHAT_ENGINE, create_app
from chat.chat_v2_cometd import BOUND_CHAT, CometdChat, _send_in_order
from chat.config import ChatConfig, ServiceConfig
from chat.engine import ChatEngine
from chat.model import ChatSession, Event
from chat.passwords import hash_password
from chat.redis_store import RedisChatStore
from chat.store import ChatStore, MemoryChatStore
from tests.conftest import PipelineClient, Started, connected_client, fast_options
from tests.support.chat_cometd import (
    AGENT,
    BOGUS,
    CLIENT,
    DISCONNECT_REPLY,
    Data,
    event,
    notification,
)
from tests.support.redis_server import RedisServer

SERVICE = "customer-support"
CHANNEL = f"/service/chatV2/{SERVICE}"
SECURED = "secured"
OTHER = "sales"
USER, PASSWORD = "user1", "pass1"


# -- scaffolding ----------------------------------------------------------------------------


class Probe(ChatStore):
    """A store (memory or Redis, mixed in below) recording the chats created, with a one-shot
    hook run when a transcript is read (to commit something at that exact point)."""

    created: list[str]
    before_events: Callable[[], Awaitable[object]] | None = None

    async def create(self, session: ChatSession, events: list[Event]) -> None:
        await super().create(session, events)  # type: ignore[safe-super]
        self.created.append(session.chat_id)

    async def events(self, chat_id: str, from_index: int = 1) -> list[Event]:
        hook, self.before_events = self.before_events, None
        if hook is not None:
            await hook()
        return await super().events(chat_id, from_index)  # type: ignore[safe-super]


class ProbeStore(Probe, MemoryChatStore):
    def __init__(self) -> None:
        super().__init__()
        self.created = []


class RedisProbeStore(Probe, RedisChatStore):
    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix=prefix)
        self.created = []


def chat_config(**options: Any) -> ChatConfig:
    """Three services: the default one, one with Basic auth, and another plain one."""
    credentials = {USER: hash_password(PASSWORD, iterations=1000)}
    services = {
        SERVICE: ServiceConfig(SERVICE),
        SECURED: ServiceConfig(SECURED, basic_auth=True, credentials=credentials),
        OTHER: ServiceConfig(OTHER),
    }
    return ChatConfig(services=services, **options)


class Customer:
    """A GMS CometD chat client: publishes operations, reads what comes back on the channel."""

    def __init__(self, client: PipelineClient, service: str = SERVICE) -> None:
        self.client = client
        self.channel = f"/service/chatV2/{service}"
        self.key: str | None = None

    @property
    def client_id(self) -> str:
        assert self.client.client_id is not None
        return self.client.client_id

    async def publish(self, data: Data) -> None:
        """Publish; the Bayeux publish reply is a plain success whatever the chat result."""
        reply = await self.client.publish(self.channel, data)
        assert reply == {"channel": self.channel, "id": reply["id"], "successful": True}

    async def received(self) -> list[Data]:
        """Everything queued for this client since last time: chat notifications only, on the
        chat channel, without `id` (they are not Bayeux replies)."""
        messages = await self.client.poll()
        for message in messages:
            assert set(message) == {"channel", "data"}, message
            assert message["channel"] == self.channel, message
        return [message["data"] for message in messages]

    async def call(self, operation: str, **params: Any) -> list[Data]:
        await self.publish({"operation": operation, **params})
        return await self.received()

    async def op(self, operation: str, **params: Any) -> Data:
        """An operation with this client's secure key; its one notification."""
        [reply] = await self.call(operation, **{"secureKey": self.key, **params})
        return reply

    async def request_chat(self, **params: Any) -> Data:
        [reply] = await self.call("requestChat", **({"nickname": "Joan"} | params))
        self.key = reply.get("secureKey")
        return reply


@dataclass
class Gms:
    bayeux: BayeuxServer
    chat: ChatEngine
    store: Probe
    agents: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def cometd(self) -> CometdChat:
        return next(o for o in self.chat.observers if isinstance(o, CometdChat))

    async def customer(self, service: str = SERVICE) -> Customer:
        return Customer(await connected_client(self.bayeux), service)

    async def chatting(self) -> Customer:
        """A customer whose chat an agent (Ann, participant 2) has joined."""
        customer = await self.customer()
        await customer.request_chat()
        await self.agent_joins(customer)
        assert [m["messages"][0]["type"] for m in await customer.received()] == [
            "ParticipantJoined"
        ]
        return customer

    async def chat_of(self, customer: Customer) -> ChatSession:
        """The customer's chat as stored (also after the client left it)."""
        assert customer.key is not None
        chat_id = await self.store.find_by_secure_key(customer.key)
        chat = await self.store.load(chat_id or "")
        assert chat is not None
        return chat

    async def agent_joins(self, customer: Customer, nickname: str = "Ann") -> None:
        chat = await self.chat_of(customer)
        await self.chat.agent_join(chat.chat_id, f"agent{next(self.agents)}", nickname)

    async def agent_says(self, customer: Customer, text: str, *, visible: bool = True) -> None:
        chat = await self.chat_of(customer)
        agent = next(iter(chat.agents))
        await self.chat.agent_event(chat.chat_id, agent, "Message", text, visible=visible)

    async def stop(self) -> None:
        await self.cometd.settle()
        await self.chat.close()
        await self.bayeux.close()


GmsFactory = Callable[..., Awaitable[Gms]]


@pytest.fixture(params=["memory", "redis"])
async def make_gms(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[GmsFactory]:
    """`await make_gms(engine=None, store=None, **chat_options)`: a started GMS server, on
    each chat store (memory, and Redis as with `--redis`)."""

    def default_store() -> Probe:
        if request.param == "redis":
            return RedisProbeStore(redis_server.url, prefix=f"cometd{id(request)}{len(made)}")
        return ProbeStore()

    made: list[object] = []

    async def make(
        engine: Engine | None = None,
        store: Probe | None = None,
        options: BayeuxOptions | None = None,
        **chat_options: Any,
    ) -> Gms:
        store = store or default_store()
        made.append(store)
        app = create_app(options or fast_options(), engine, chat_config(**chat_options), store)
        gms = Gms(app[BAYEUX_SERVER], app[CHAT_ENGINE], store)
        await gms.bayeux.start()
        await gms.chat.start()
        return gms

    async with Started(make, Gms.stop) as started:
        yield started


@pytest.fixture
async def gms(make_gms: GmsFactory) -> Gms:
    return await make_gms()


def untimed(data: Data) -> Data:
    """The notification without its events' `utcTime` (checked: whole seconds, in ms)."""
    data = copy.deepcopy(data)
    for transcript_event in data.get("messages") or ():
        utc = transcript_event.pop("utcTime")
        assert isinstance(utc, int) and utc % 1000 == 0 and utc > 1_500_000_000_000, utc
    return data


def failure(code: int, advice: str | None = None, **fields: Any) -> Data:
    """An error notification in the default mode (no chat identified unless `fields` say)."""
    error: Data = {"code": code} if advice is None else {"code": code, "advice": advice}
    return {"statusCode": 2, "errors": [error], **BOGUS} | fields


NOT_FOUND = failure(249, "chat session not found", chatEnded=True)


def indexes(notifications: list[Data]) -> list[int]:
    return [event["index"] for data in notifications for event in data.get("messages") or ()]


# -- §11 items 62-82 -----------------------------------------------------------------------


async def test_62_subscribing_to_the_chat_channel_succeeds_even_for_an_unknown_service(
    gms: Gms,
) -> None:
    watcher = await connected_client(gms.bayeux)
    for channel in (CHANNEL, "/service/chatV2/no-such-service"):
        reply = await watcher.subscribe(channel)
        assert reply["successful"] is True, reply
        assert reply["subscription"] == channel
    # A service channel is no broadcast channel: another client's chat is not seen.
    customer = await gms.customer()
    await customer.request_chat()
    await gms.agent_joins(customer)
    assert len(await customer.received()) == 1
    assert await watcher.poll() == []


async def test_63_a_listener_only_client_gets_replies_and_notifications(gms: Gms) -> None:
    customer = await gms.customer()
    reply = await customer.request_chat()
    await gms.agent_joins(customer)
    [joined] = await customer.received()
    assert gms.bayeux.sessions[customer.client_id].subscriptions == set()
    assert reply["statusCode"] == 0
    assert joined["messages"][0]["from"] == AGENT


async def test_64_request_chat_is_answered_with_the_clients_participant_joined(gms: Gms) -> None:
    customer = await gms.customer()
    reply = await customer.call(
        "requestChat", firstName="Joan", lastName="Smith", subject="Help", userData={"a": "b"}
    )
    assert len(reply) == 1
    key = reply[0]["secureKey"]
    assert isinstance(key, str) and len(key) >= 16
    party = {"nickname": "Joan Smith", "participantId": 1, "type": "Client"}
    assert untimed(reply[0]) == notification(key, [event("ParticipantJoined", party, 1)], 2)
    chat = await gms.chat.by_secure_key(key)
    assert (chat.subject, chat.user_data, chat.origin) == ("Help", {"a": "b"}, "cometd")


@pytest.mark.parametrize("mode", ["bogus", "real"])
async def test_65_legacy_ids_are_bogus_by_default_and_real_on_request(
    make_gms: GmsFactory, mode: str
) -> None:
    gms = await make_gms(cometd_legacy_ids=mode)
    customer = await gms.customer()
    notifications = [await customer.request_chat()]
    await gms.agent_joins(customer)
    notifications += await customer.received()
    notifications.append(await customer.op("sendMessage", message="hi"))
    notifications.append(await customer.op("sendMessage"))  # an error notification
    notifications.append(await customer.op("disconnect"))
    chat = await gms.chat_of(customer)
    real = {"alias": "117", "userId": chat.user_id, "chatId": chat.chat_id}
    expected = BOGUS if mode == "bogus" else real
    for data in notifications:
        if "secureKey" in data:
            assert {k: data[k] for k in ("alias", "userId", "chatId")} == expected, data
        else:  # the disconnect reply has no userId
            assert {k: data[k] for k in ("alias", "chatId")} == {
                k: expected[k] for k in ("alias", "chatId")
            }
            assert "userId" not in data


async def test_66_operations_need_only_operation_and_secure_key_and_ignore_deprecated_ids(
    gms: Gms,
) -> None:
    customer = await gms.chatting()
    await customer.publish({"operation": "sendMessage", "secureKey": customer.key, "message": "a"})
    [plain] = await customer.received()
    deprecated = {"alias": "0", "userId": "deprecated", "chatId": "deprecated"}
    with_bogus = await customer.op("sendMessage", message="b", **deprecated)
    stale = {"alias": "117", "userId": "007555677B20000A", "chatId": "00048aAPEQJ8000U"}
    with_stale = await customer.op("readReceipt", transcriptPosition="3", **stale)
    resumed = await customer.op("requestNotifications", transcriptPosition=4, **deprecated)
    assert [d["statusCode"] for d in (plain, with_bogus, with_stale, resumed)] == [0, 0, 0, 0]
    assert indexes([plain, with_bogus, resumed]) == [3, 4, 4]


async def test_67_an_agent_message_arrives_as_one_unsolicited_notification(gms: Gms) -> None:
    customer = await gms.chatting()
    await gms.agent_says(customer, "hello")
    [data] = await customer.received()
    assert untimed(data) == notification(customer.key, [event("Message", AGENT, 3, "hello")], 4)


async def test_68_the_send_message_reply_carries_the_message_and_nothing_follows(
    gms: Gms,
) -> None:
    customer = await gms.chatting()
    [reply] = await customer.call(
        "sendMessage", secureKey=customer.key, message="Hello, ...", messageType="text"
    )
    message = event("Message", CLIENT, 3, "Hello, ...", messageType="text")
    assert untimed(reply) == notification(customer.key, [message], 4)
    assert await customer.received() == []
    [stored] = [e for e in await gms.chat.transcript(await gms.chat_of(customer), 3)]
    assert stored.to_wire()["text"] == "Hello, ..."


@pytest.mark.parametrize(
    ("operation", "params", "kind", "text"),
    [
        ("startTyping", {"message": "hello, I ha"}, "TypingStarted", "hello, I ha"),
        ("startTyping", {}, "TypingStarted", None),
        (
            "stopTyping",
            {"message": "hello, I have a question"},
            "TypingStopped",
            "hello, I have a question",
        ),
        ("pushUrl", {"pushUrl": "http://www.genesys.com"}, "PushUrl", "http://www.genesys.com"),
        ("updateNickname", {"nickname": "MyNewNickname"}, "NicknameUpdated", "MyNewNickname"),
        ("customNotice", {"message": "ORDER UPDATE"}, "CustomNotice", "ORDER UPDATE"),
        ("customNotice", {}, "CustomNotice", None),
    ],
)
async def test_69_event_operations_reply_with_exactly_their_event(
    gms: Gms, operation: str, params: Data, kind: str, text: str | None
) -> None:
    customer = await gms.chatting()
    reply = await customer.op(operation, **params)
    party = CLIENT | {"nickname": params.get("nickname", "Joan")}
    assert untimed(reply) == notification(customer.key, [event(kind, party, 3, text)], 4)
    assert await customer.received() == []


async def test_70_read_receipt_and_update_data_reply_without_events(gms: Gms) -> None:
    customer = await gms.chatting()
    read = await customer.op("readReceipt", transcriptPosition="2")
    updated = await customer.op("updateData", userData={"key1": "value1", "n": 5})
    assert read == notification(customer.key, [], 3)
    assert updated == notification(customer.key, [], 3)
    chat = await gms.chat_of(customer)
    assert (chat.read_mark, chat.user_data) == (2, {"key1": "value1", "n": "5"})
    assert chat.last_index == 2, "no transcript event"


async def test_71_the_disconnect_reply_has_no_secure_key_nor_user_id(gms: Gms) -> None:
    customer = await gms.chatting()
    reply = await customer.op("disconnect")
    assert reply == DISCONNECT_REPLY
    assert await customer.received() == [], "the client's own ParticipantLeft is not sent"


async def test_72_operations_after_disconnect_are_refused(gms: Gms) -> None:
    customer = await gms.chatting()
    chat_id = (await gms.chat_of(customer)).chat_id
    await customer.op("disconnect")
    for operation, params in [
        ("sendMessage", {"message": "still there?"}),
        ("requestNotifications", {}),
        ("updateNickname", {"nickname": "x"}),
        ("disconnect", {}),
    ]:
        assert await customer.op(operation, **params) == NOT_FOUND, operation
    [*_, left] = await gms.chat.store.events(chat_id)
    assert (left.type, left.party.type) == ("ParticipantLeft", "Client")


async def test_73_after_a_rehandshake_request_notifications_returns_the_missed_events(
    gms: Gms,
) -> None:
    first = await gms.chatting()
    await gms.agent_says(first, "first")
    [seen] = await first.received()
    assert (await first.client.disconnect())["successful"] is True
    await gms.cometd.settle()
    await gms.agent_says(first, "second")
    await gms.agent_says(first, "third")
    second = await gms.customer()
    second.key = first.key
    reply = await second.op("requestNotifications", transcriptPosition=str(seen["nextPosition"]))
    missed = [event("Message", AGENT, 4, "second"), event("Message", AGENT, 5, "third")]
    assert untimed(reply) == notification(first.key, missed, 6)
    await gms.agent_says(first, "fourth")
    [resumed] = await second.received()
    assert untimed(resumed) == notification(first.key, [event("Message", AGENT, 6, "fourth")], 7)


@pytest.mark.parametrize("position", [None, 0, "0", 1])
async def test_74_request_notifications_from_zero_or_without_position_returns_all(
    gms: Gms, position: int | str | None
) -> None:
    customer = await gms.chatting()
    await gms.agent_says(customer, "hello")
    await customer.received()
    params = {} if position is None else {"transcriptPosition": position}
    reply = await customer.op("requestNotifications", **params)
    everything = [
        event("ParticipantJoined", CLIENT, 1),
        event("ParticipantJoined", AGENT, 2),
        event("Message", AGENT, 3, "hello"),
    ]
    assert untimed(reply) == notification(customer.key, everything, 4)


async def test_75_a_second_request_chat_on_one_client_is_refused(gms: Gms) -> None:
    customer = await gms.customer()
    await customer.request_chat()
    again = await customer.call("requestChat", nickname="Joan")
    assert again == [failure(311, "one chat per CometD connection")]
    assert len(gms.store.created) == 1
    await customer.op("disconnect")
    assert await customer.call("requestChat", nickname="Joan") == again, "even after the end"
    assert len(gms.store.created) == 1


async def test_76_request_notifications_from_another_client_moves_the_binding(gms: Gms) -> None:
    phone = await gms.chatting()
    laptop = await gms.customer()
    laptop.key = phone.key
    reply = await laptop.op("requestNotifications", transcriptPosition=3)
    assert reply == notification(phone.key, [], 3)
    await gms.agent_says(phone, "where are you?")
    [moved] = await laptop.received()
    assert moved["messages"][0]["text"] == "where are you?"
    assert await phone.received() == []
    refused = await phone.op("sendMessage", message="me too")
    assert refused["errors"][0]["code"] == 311
    assert refused["statusCode"] == 2
    chat = await gms.chat_of(phone)
    assert chat.binding is not None and chat.binding.client_id == laptop.client_id


@pytest.mark.parametrize("make_gms", ["redis"], indirect=True)  # two nodes need Redis
async def test_a_binding_moved_on_another_node_stops_the_client_this_node_saw_bound(
    make_gms: GmsFactory, redis_server: RedisServer
) -> None:
    """Node one checks an operation's chat on the copy it last saw (still bound to the
    phone); the operation's commit checks again on the chat as stored, bound elsewhere."""
    one, two = [
        await make_gms(store=RedisProbeStore(redis_server.url, prefix=f"moved{id(make_gms)}"))
        for _ in range(2)
    ]
    phone = await one.chatting()
    assert (await phone.op("sendMessage", message="hi"))["statusCode"] == 0
    laptop = await two.customer()
    laptop.key = phone.key
    assert (await laptop.op("requestNotifications"))["statusCode"] == 0
    refused = await phone.op("sendMessage", message="me too")
    assert (refused["statusCode"], refused["errors"][0]["code"]) == (2, 311)
    chat = await two.chat_of(phone)
    assert chat.binding is not None and chat.binding.client_id == laptop.client_id
    assert chat.last_index == 3  # joined, agent joined, "hi"
    assert (await laptop.op("sendMessage", message="from the laptop"))["statusCode"] == 0


async def test_77_basic_auth_accepts_open_and_encoded_credentials_only(gms: Gms) -> None:
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    wrong = base64.b64encode(f"{USER}:nope".encode()).decode()
    for auth in (
        {"username": USER, "password": PASSWORD},
        {"encoded": encoded},
        {"encoded": encoded, "username": USER, "password": "wrong"},  # encoded wins
    ):
        customer = await gms.customer(SECURED)
        reply = await customer.request_chat(auth=auth)
        assert reply["statusCode"] == 0, (auth, reply)
    created = len(gms.store.created)
    refused: list[Any] = [
        None,
        {},
        {"username": USER, "password": "nope"},
        {"username": "intruder", "password": PASSWORD},
        {"encoded": wrong},
        {"encoded": "not base64!"},
        {"encoded": base64.b64encode(b"no colon").decode()},
        {"encoded": 12},
        "user1:pass1",
    ]
    for auth in refused:
        customer = await gms.customer(SECURED)
        params = {} if auth is None else {"auth": auth}
        reply = await customer.request_chat(**params)
        assert reply == failure(310, "authentication required"), auth
        assert BOUND_CHAT not in gms.bayeux.sessions[customer.client_id].attributes
    assert len(gms.store.created) == created
    open_service = await gms.customer()
    assert (await open_service.request_chat(auth={"encoded": wrong}))["statusCode"] == 0


async def test_78_unknown_or_missing_operation_and_missing_secure_key_are_errors(
    gms: Gms,
) -> None:
    customer = await gms.customer()
    [unknown] = await customer.call("sendMesage", secureKey="x")
    assert unknown == failure(307, "unknown operation sendMesage")
    await customer.publish({"secureKey": "x"})
    assert await customer.received() == [failure(167, "operation is missing")]
    await customer.publish({"operation": "", "secureKey": "x"})
    assert (await customer.received())[0]["errors"][0]["code"] == 167
    assert await customer.call("sendMessage", message="hi") == [failure(153)]
    assert await customer.call("sendMessage") == [
        {"statusCode": 2, "errors": [{"code": 153}, {"code": 162}], **BOGUS}
    ]


async def test_79_a_publish_to_an_unknown_service_is_answered_with_306(gms: Gms) -> None:
    customer = await gms.customer("no-such-service")
    assert await customer.call("requestChat", nickname="Joan") == [
        failure(306, "unknown service no-such-service")
    ]
    nested = Customer(customer.client, "a/b")
    assert await nested.call("requestChat", nickname="Joan") == [
        failure(306, "unknown service a/b")
    ]
    assert gms.store.created == []


async def test_80_notifications_arrive_in_ascending_index_order_without_repeats(
    gms: Gms,
) -> None:
    customer = await gms.customer()
    seen = [await customer.request_chat()]
    await gms.agent_joins(customer)
    for n in range(3):
        await gms.agent_says(customer, f"agent {n}")
        seen += await customer.received()
        seen.append(await customer.op("sendMessage", message=f"client {n}"))
        await gms.agent_says(customer, "internal", visible=False)
        seen.append(await customer.op("startTyping"))
    chat = await gms.chat_of(customer)
    await gms.chat.complete(chat.chat_id)
    seen += await customer.received()
    got = indexes(seen)
    assert got == sorted(set(got)), got
    assert len(got) == 1 + 1 + 3 * 3 + 2
    messages = [e for data in seen for e in data["messages"]]
    assert len({repr(sorted(e.items())) for e in messages}) == len(messages)


async def test_81_the_chat_outlives_an_expired_bayeux_session(gms: Gms) -> None:
    customer = await gms.chatting()
    session = gms.bayeux.sessions[customer.client_id]
    session.last_seen -= 3600
    assert gms.bayeux.sweep() == 1
    await gms.cometd.settle()
    chat = await gms.chat_of(customer)
    assert (chat.ended, chat.binding) == (False, None)
    await gms.agent_says(customer, "are you there?")
    back = await gms.customer()
    back.key = customer.key
    reply = await back.op("requestNotifications", transcriptPosition=3)
    assert untimed(reply) == notification(
        customer.key, [event("Message", AGENT, 3, "are you there?")], 4
    )


async def test_82_with_notification_mode_off_chat_operations_are_refused(
    make_gms: GmsFactory,
) -> None:
    gms = await make_gms(enable_notification_mode=False)
    customer = await gms.customer()
    refused = failure(249, "notification mode is off")
    assert await customer.call("requestChat", nickname="Joan") == [refused]
    assert await customer.call("sendMessage", secureKey="k", message="m") == [refused]
    assert gms.store.created == []


# -- finer points ------------------------------------------------------------------------------


async def test_hidden_events_are_never_sent(gms: Gms) -> None:
    customer = await gms.chatting()
    await gms.agent_says(customer, "consult: VIP", visible=False)
    await gms.agent_says(customer, "hello")
    [data] = await customer.received()
    assert untimed(data) == notification(customer.key, [event("Message", AGENT, 4, "hello")], 5)
    reply = await customer.op("requestNotifications", transcriptPosition=3)
    assert untimed(reply) == notification(customer.key, [event("Message", AGENT, 4, "hello")], 5)


async def test_the_end_is_one_notification_per_event_with_chat_ended_and_position_1(
    gms: Gms,
) -> None:
    customer = await gms.chatting()
    await gms.chat.complete((await gms.chat_of(customer)).chat_id)
    ended = {"chatEnded": True}
    assert [untimed(d) for d in await customer.received()] == [
        notification(customer.key, [event("ParticipantLeft", AGENT, 3)], 1, **ended),
        notification(customer.key, [event("ParticipantLeft", CLIENT, 4)], 1, **ended),
    ]
    # Within the retention the final events can still be read; nothing else is allowed.
    reply = await customer.op("requestNotifications", transcriptPosition=3)
    assert len(reply["messages"]) == 2 and reply["chatEnded"] is True
    assert reply["nextPosition"] == 1
    assert await customer.op("sendMessage", message="hello?") == NOT_FOUND


async def test_a_validation_error_on_a_known_chat_carries_its_state(gms: Gms) -> None:
    customer = await gms.chatting()
    for operation, code in [
        ("sendMessage", 162),
        ("pushUrl", 163),
        ("updateNickname", 161),
        ("readReceipt", 164),
        ("updateData", 105),
    ]:
        reply = await customer.op(operation)
        assert reply == failure(code, chatEnded=False, secureKey=customer.key), operation


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("readReceipt", {"transcriptPosition": "3"}),  # not below nextPosition (3)
        ("readReceipt", {"transcriptPosition": "0"}),
        ("readReceipt", {"transcriptPosition": "two"}),
        ("readReceipt", {"transcriptPosition": 1.5}),
        ("requestNotifications", {"transcriptPosition": -1}),
        ("requestNotifications", {"transcriptPosition": True}),
    ],
)
async def test_bad_transcript_positions_are_308(gms: Gms, operation: str, params: Data) -> None:
    customer = await gms.chatting()
    reply = await customer.op(operation, **params)
    assert reply == failure(308, chatEnded=False, secureKey=customer.key)


async def test_positions_and_ids_may_be_strings_or_numbers(gms: Gms) -> None:
    customer = await gms.chatting()
    assert (await customer.op("readReceipt", transcriptPosition=2))["statusCode"] == 0
    assert (await customer.op("readReceipt", transcriptPosition=" 2 "))["statusCode"] == 0
    assert (await customer.op("readReceipt", transcriptPosition=2.0))["statusCode"] == 0
    sent = await customer.op("sendMessage", message=42, userId=7, chatId=8, alias=0)
    assert sent["messages"][0]["text"] == "42"
    reply = await customer.op("requestNotifications", transcriptPosition="3")
    assert indexes([reply]) == [3]


async def test_user_data_may_be_an_object_or_a_json_string(gms: Gms) -> None:
    customer = await gms.customer()
    await customer.request_chat(userData='{"TimeZone": -480, "topic": "loans"}')
    chat = await gms.chat_of(customer)
    assert chat.user_data == {"TimeZone": "-480", "topic": "loans"}
    assert (await customer.op("updateData", userData='{"a":"b"}'))["statusCode"] == 0
    malformed: list[Any] = ["{not json", "[1, 2]", "", {}, [], 5]
    for bad in malformed:
        reply = await customer.op("updateData", userData=bad)
        assert reply["errors"] == [{"code": 105}], bad
    assert (await gms.chat_of(customer)).user_data == {
        "TimeZone": "-480",
        "topic": "loans",
        "a": "b",
    }
    other = await gms.customer()
    assert (await other.request_chat(userData="[1]"))["errors"] == [{"code": 105}]


async def test_request_chat_name_rules_come_from_the_engine(gms: Gms) -> None:
    cases: list[tuple[Data, list[int]]] = [
        ({"nickname": None}, [161]),
        ({"nickname": None, "firstName": "Joan"}, [103]),
        ({"nickname": None, "lastName": "Smith"}, [102]),
        ({"emailAddress": "not-an-address"}, [364]),
    ]
    for params, codes in cases:
        customer = await gms.customer()
        reply = await customer.request_chat(**params)
        assert [e["code"] for e in reply["errors"]] == codes, params
        assert reply["statusCode"] == 2
    assert gms.store.created == []


async def test_push_keys_bind_push_on_request_chat_and_refresh_on_request_notifications(
    gms: Gms,
) -> None:
    keys = {"push_notification_deviceid": "dev1", "push_notification_type": "customhttp"}
    customer = await gms.customer()
    await customer.request_chat(userData=keys | {"other": "x"})
    assert (await gms.chat_of(customer)).push == keys
    await customer.op("requestNotifications", userData={"push_notification_deviceid": "dev2"})
    assert (await gms.chat_of(customer)).push == keys, "incomplete keys keep the binding"
    refreshed = keys | {"push_notification_deviceid": "dev3"}
    await customer.op("requestNotifications", userData=refreshed)
    assert (await gms.chat_of(customer)).push == refreshed


async def test_an_unbound_client_cannot_operate_a_chat(gms: Gms) -> None:
    owner = await gms.chatting()
    stranger = await gms.customer()
    stranger.key = owner.key
    reply = await stranger.op("sendMessage", message="hijack")
    assert reply["statusCode"] == 2
    assert reply["errors"][0]["code"] == 311
    assert (await gms.chat_of(owner)).last_index == 2


async def test_a_client_bound_to_one_chat_cannot_take_over_another(gms: Gms) -> None:
    mine, theirs = await gms.chatting(), await gms.chatting()
    grab = await mine.op("requestNotifications", secureKey=theirs.key)
    assert grab == failure(
        311, "one chat per CometD connection", chatEnded=False, secureKey=theirs.key
    )
    chat = await gms.chat_of(theirs)
    assert chat.binding is not None and chat.binding.client_id == theirs.client_id


async def test_a_secure_key_opens_a_chat_only_on_its_own_service(gms: Gms) -> None:
    owner = await gms.chatting()
    elsewhere = Customer(owner.client, OTHER)
    elsewhere.key = owner.key
    assert await elsewhere.op("sendMessage", message="hi") == NOT_FOUND
    assert await elsewhere.op("requestNotifications") == NOT_FOUND


async def test_client_events_made_over_rest_reach_the_bound_client(gms: Gms) -> None:
    customer = await gms.chatting()
    chat = await gms.chat_of(customer)
    await gms.chat.client_event(chat.chat_id, "Message", "typed on the web")
    [data] = await customer.received()
    assert data["messages"][0]["text"] == "typed on the web"
    assert data["messages"][0]["from"] == CLIENT


async def test_a_new_chat_after_the_end_when_configured(make_gms: GmsFactory) -> None:
    gms = await make_gms(cometd_allow_new_chat_after_end=True)
    customer = await gms.customer()
    await customer.request_chat()
    assert (await customer.call("requestChat", nickname="J"))[0]["errors"][0]["code"] == 311
    await customer.op("disconnect")
    assert (await customer.request_chat())["statusCode"] == 0
    assert len(gms.store.created) == 2


async def test_the_channel_is_echoed_in_data_when_configured(make_gms: GmsFactory) -> None:
    gms = await make_gms(cometd_echo_channel_in_data=True)
    customer = await gms.customer()
    reply = await customer.request_chat()
    assert reply["channel"] == CHANNEL
    assert (await customer.call("nope", secureKey="x"))[0]["channel"] == CHANNEL


async def test_events_committed_during_request_notifications_follow_its_reply(gms: Gms) -> None:
    """Bind first, then snapshot: an agent message committed between the two is not in the
    reply (it ends at the bind) and arrives right after it, once."""
    customer = await gms.chatting()
    gms.store.before_events = lambda: gms.agent_says(customer, "meanwhile")
    await customer.publish(
        {"operation": "requestNotifications", "secureKey": customer.key, "transcriptPosition": 2}
    )
    reply, meanwhile = await customer.received()
    assert untimed(reply) == notification(customer.key, [event("ParticipantJoined", AGENT, 2)], 3)
    assert untimed(meanwhile) == notification(
        customer.key, [event("Message", AGENT, 3, "meanwhile")], 4
    )


async def test_notifications_held_during_an_operation_keep_index_order(gms: Gms) -> None:
    """An agent message committed before the client's own message but delivered while its
    operation is running is sent before that reply; later ones after it."""
    customer = await gms.chatting()
    chat = await gms.chat_of(customer)
    session = gms.bayeux.sessions[customer.client_id]
    session.hold_channel(CHANNEL)  # as `handle` does while an operation runs
    await gms.agent_says(customer, "before")
    outcome = await gms.chat.client_event(chat.chat_id, "Message", "mine")
    await gms.agent_says(customer, "after")
    held = session.release_channel(CHANNEL)
    reply = {"messages": [outcome.events[0].to_wire()]}
    _send_in_order(session, CHANNEL, reply, [outcome.events[0].index], held)
    got = await customer.received()
    assert indexes(got) == [3, 4, 5]
    assert [d["messages"][0]["text"] for d in got] == ["before", "mine", "after"]


async def test_an_unexpected_failure_is_reported_with_a_reference(
    gms: Gms, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = await gms.chatting()

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(gms.chat, "client_event", broken)
    reply = await customer.op("sendMessage", message="hi")
    [error] = reply["errors"]
    assert error["code"] == 240 and len(error["advice"]) == 16
    assert reply["statusCode"] == 2


# -- node handover ---------------------------------------------------------------------------


async def test_an_adopted_session_brings_its_chats_notifications_to_the_new_node(
    make_gms: GmsFactory, redis_server: RedisServer
) -> None:
    store = ProbeStore()
    prefix = f"chatv2-{id(store)}"
    old = await make_gms(RedisEngine(redis_server.url, prefix, "old"), store)
    new = await make_gms(RedisEngine(redis_server.url, prefix, "new"), store)
    customer = await old.chatting()
    assert customer.client.server.sessions[customer.client_id].attributes[BOUND_CHAT] == {
        "chatId": (await old.chat_of(customer)).chat_id,
        "service": SERVICE,
    }
    await old.bayeux.close()  # hands its sessions over
    customer.client.server = new.bayeux
    assert await customer.received() == []  # adopts the session
    await new.cometd.settle()
    chat = await new.chat_of(customer)
    assert chat.binding is not None
    assert (chat.binding.client_id, chat.binding.node) == (customer.client_id, "new")
    await new.agent_says(customer, "still here")
    [data] = await customer.received()
    assert data["messages"][0]["text"] == "still here"
    assert (await customer.op("sendMessage", message="me too"))["statusCode"] == 0
