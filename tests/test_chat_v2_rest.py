"""Chat API v2 over REST (spec-chat-v2 §1-§3), one test per behaviour of the conformance
checklist (§11 items 1-43) plus the request rules of §1.2-§1.3 and §1.7.

The customer side goes over HTTP; the agent side is driven through the ChatEngine API,
as an agent desktop would through its own API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chat import model as m
from chat.app import CHAT_ENGINE, create_app
from chat.config import ChatConfig, ServiceConfig
from chat.engine import Cause, ChatEngine
from chat.model import ChatSession, Event
from chat.redis_store import RedisChatStore
from chat.store import ChatStore, MemoryChatStore, StoreUnavailable
from tests.support.chat_rest import (
    ALIAS,
    NOT_FOUND,
    REPLY_KEYS,
    ROOT,
    SECURED,
    Http,
    Json,
    RestChat,
    reply,
    secured_service,
)
from tests.support.redis_server import RedisServer

SERVICE = "customer-support"
PREVIEW = "preview"
"""A service with `typing_preview` and a tenant."""
IDLE = "idle"
"""A service with tiny idle alert and close timeouts."""
GRACE_S = 0.3
DISCONNECTED = {
    "messages": None,
    "chatEnded": None,
    "statusCode": 0,
    "alias": None,
    "secureKey": None,
    "userId": None,
}
OPERATIONS = [
    "send",
    "startTyping",
    "stopTyping",
    "refresh",
    "disconnect",
    "pushUrl",
    "updateNickname",
    "customNotice",
    "updateData",
    "readReceipt",
]
VALID_PARAMS: dict[str, Json] = {
    "send": {"message": "hello"},
    "pushUrl": {"pushUrl": "url.to.see"},
    "updateNickname": {"nickname": "Bob"},
    "updateData": {"userData[k]": "v"},
    "readReceipt": {"transcriptPosition": "1"},
}
"""Each operation's own required parameters, valid."""


def config() -> ChatConfig:
    services = [
        ServiceConfig(SERVICE),
        ServiceConfig(PREVIEW, typing_preview=True, tenant="Resources"),
        secured_service(),
        ServiceConfig(IDLE, idle_alert_timeout_s=0.3, idle_close_timeout_s=0.3),
    ]
    return ChatConfig(
        services={s.name: s for s in services}, alias=ALIAS, secure_key_grace_s=GRACE_S
    )


class Flaky(ChatStore):
    """A store (memory or Redis, mixed in below) that fails on demand, as Redis might."""

    failure: Exception | None = None

    async def load(self, chat_id: str) -> ChatSession | None:
        if self.failure is not None:
            raise self.failure
        return await super().load(chat_id)  # type: ignore[safe-super]


class FlakyMemoryStore(Flaky, MemoryChatStore):
    pass


class FlakyRedisStore(Flaky, RedisChatStore):
    pass


class AgentDesk:
    """What the agent side hears: every committed event, with its cause."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Event, str]] = []

    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        self.events.extend((session.chat_id, event, cause.actor) for event in events)


@dataclass
class Env:
    http: Http
    chat: ChatEngine
    store: Flaky
    desk: AgentDesk


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Env]:
    """The REST API on each chat store: memory, and Redis (as with `--redis`)."""
    store: Flaky = (
        FlakyRedisStore(redis_server.url, prefix=f"rest{id(request)}")
        if request.param == "redis"
        else FlakyMemoryStore()
    )
    app = create_app(config=config(), store=store)
    async with TestClient(TestServer(app)) as http:
        chat = app[CHAT_ENGINE]
        desk = AgentDesk()
        chat.observers.append(desk)
        yield Env(http, chat, store, desk)


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


async def read(response: aiohttp.ClientResponse) -> tuple[int, Any]:
    """Status and strict-JSON body of a reply, checking its content type."""
    assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
    return response.status, strict_json(await response.text())


async def post(http: Http, path: str, data: Any = None, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(path, data=data, **kwargs) as response:
        return await read(response)


def events(messages: list[Json]) -> list[Json]:
    """The events without `utcTime` (checked to be whole epoch milliseconds)."""
    result = []
    for message in messages:
        utc = message["utcTime"]
        assert isinstance(utc, int) and utc > 1_000_000_000_000 and utc % 1000 == 0
        result.append({k: v for k, v in message.items() if k != "utcTime"})
    return result


def brief(messages: list[Json]) -> list[tuple[int, str, str, str | None]]:
    """(index, type, from.type, text) per event."""
    return [(m["index"], m["type"], m["from"]["type"], m.get("text")) for m in messages]


def multipart(fields: Json) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("ignored", b"file bytes", filename="a.txt")  # forces multipart
    return form


@dataclass
class Customer(RestChat):
    """A chat created over REST, its credentials, and the reply that created it."""

    created: Json

    async def call(self, operation: str, **params: Any) -> tuple[int, Json]:
        data = {**self.credentials(), **params}
        return await post(self.http, f"{self.base}/{operation}", data)

    async def ok(self, operation: str, **params: Any) -> Json:
        status, body = await self.call(operation, **params)
        assert status == 200 and body["statusCode"] == 0, body
        return body

    async def refresh(self, **params: Any) -> Json:
        return await self.ok("refresh", **params)


async def start_chat(env: Env, service: str = SERVICE, **params: Any) -> Customer:
    data = params or {"firstName": "First", "lastName": "Last"}
    status, body = await post(env.http, f"{ROOT}/{service}", data)
    assert status == 200 and body["statusCode"] == 0, body
    return Customer(
        env.http, service, body["chatId"], body["userId"], body["secureKey"], ALIAS, body
    )


@pytest.fixture
async def customer(env: Env) -> Customer:
    return await start_chat(env)


# -- create and envelope (items 1-13) ----------------------------------------------------


async def test_create_with_first_and_last_name_returns_status_0_and_string_ids(
    customer: Customer,
) -> None:
    body = customer.created
    assert body["statusCode"] == 0
    for key in ("chatId", "userId", "secureKey", "alias"):
        assert isinstance(body[key], str) and body[key]
    assert body["alias"] == ALIAS


async def test_create_reply_holds_only_the_clients_participant_joined_at_index_1(
    customer: Customer,
) -> None:
    body = customer.created
    assert events(body["messages"]) == [
        {
            "from": {"nickname": "First Last", "participantId": 1, "type": "Client"},
            "index": 1,
            "type": "ParticipantJoined",
        }
    ]
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "statusCode": 0,
        "alias": ALIAS,
        "userId": customer.user_id,
        "secureKey": customer.secure_key,
        "chatId": customer.chat_id,
        "chatEnded": False,
        "nextPosition": 2,
    }


async def test_create_without_nickname_names_the_client_first_space_last(env: Env) -> None:
    customer = await start_chat(env, firstName="Ann", lastName="Lee")
    assert customer.created["messages"][0]["from"]["nickname"] == "Ann Lee"


async def test_create_with_a_nickname_only_succeeds(env: Env) -> None:
    customer = await start_chat(env, nickname="annie")
    assert customer.created["messages"][0]["from"]["nickname"] == "annie"


async def test_create_without_nickname_or_names_is_400_code_161(env: Env) -> None:
    assert await post(env.http, f"{ROOT}/{SERVICE}", {"subject": "hi"}) == (
        400,
        {"errors": [{"code": 161}]},
    )


@pytest.mark.parametrize(
    ("name", "missing"), [({"firstName": "Ann"}, 103), ({"lastName": "Lee"}, 102)]
)
async def test_create_with_one_name_only_is_400_with_the_other_names_code(
    env: Env, name: Json, missing: int
) -> None:
    assert await post(env.http, f"{ROOT}/{SERVICE}", name) == (
        400,
        {"errors": [{"code": missing}]},
    )


async def test_create_with_an_invalid_email_address_is_400_code_364(env: Env) -> None:
    data = {"nickname": "annie", "emailAddress": "not-an-address"}
    assert await post(env.http, f"{ROOT}/{SERVICE}", data) == (400, {"errors": [{"code": 364}]})


@pytest.mark.parametrize("path", ["nowhere", "nowhere/0001KaBWNVUV000K/send"])
async def test_an_unconfigured_service_is_404_code_306(env: Env, path: str) -> None:
    status, body = await post(env.http, f"{ROOT}/{path}", {"nickname": "annie"})
    assert status == 404
    assert [error["code"] for error in body["errors"]] == [306]
    assert set(body) == {"errors"}


async def test_create_accepts_a_multipart_body(env: Env) -> None:
    form = multipart({"nickname": "multi", "userData[k]": "v"})
    status, body = await post(env.http, f"{ROOT}/{SERVICE}", form)
    assert status == 200 and body["statusCode"] == 0
    assert body["messages"][0]["from"]["nickname"] == "multi"
    assert (await env.chat.load(body["chatId"])).user_data == {"k": "v"}


async def test_create_user_data_reaches_the_agent_side_unchanged(env: Env) -> None:
    customer = await start_chat(
        env,
        nickname="annie",
        **{
            "userData[TimeZone]": "-480",
            "userData[a[b]]": "x y",
            "userData[push_notification_type]": "fcm",
        },
    )
    session = await env.chat.load(customer.chat_id)
    assert session.user_data == {"TimeZone": "-480", "a[b]": "x y", "push_notification_type": "fcm"}
    assert session.push is None  # push needs a CometD chat


async def test_every_reply_is_strict_json_with_the_json_content_type(
    env: Env, customer: Customer
) -> None:
    # `read` checks the content type and strict JSON on every call; these cover each shape.
    await customer.ok("send", message="hi")
    await customer.call("send")  # 400
    await customer.call("send", message="hi", secureKey="wrong")  # 249
    await post(env.http, f"{ROOT}/nowhere", {"nickname": "a"})  # 404
    await customer.refresh()
    assert await customer.call("disconnect") == (200, DISCONNECTED)


async def test_several_missing_parameters_are_reported_in_one_400(env: Env) -> None:
    path = f"{ROOT}/{SERVICE}/0001KaBWNVUV000K/send"
    status, body = await post(env.http, path, {"transcriptPosition": "-1"})
    assert status == 400
    assert sorted(error["code"] for error in body["errors"]) == [151, 152, 153, 162, 308]
    create = {"firstName": "Ann", "emailAddress": "bad"}
    assert await post(env.http, f"{ROOT}/{SERVICE}", create) == (
        400,
        {"errors": [{"code": 103}, {"code": 364}]},
    )


async def test_a_transient_store_failure_is_status_code_1(env: Env, customer: Customer) -> None:
    env.store.failure = StoreUnavailable("redis is down")
    assert await customer.call("send", message="hi") == (200, {"statusCode": 1})
    assert await customer.call("refresh") == (200, {"statusCode": 1})
    env.store.failure = None
    await customer.ok("send", message="hi")


async def test_an_unexpected_error_is_status_code_2_code_240_with_a_logged_reference(
    env: Env, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    env.store.failure = RuntimeError("bug")
    with caplog.at_level(logging.ERROR, logger="gms.chat.rest"):
        status, body = await customer.call("refresh")
    assert status == 200
    [error] = body["errors"]
    assert body == {"statusCode": 2, "errors": [{"code": 240, "advice": error["advice"]}]}
    assert error["advice"] in caplog.text and "RuntimeError: bug" in caplog.text


# -- operations (items 14-43) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dropped", "code"),
    [("message", 162), ("userId", 152), ("secureKey", 153), ("alias", 151)],
)
async def test_send_without_a_required_parameter_is_400_with_its_code(
    customer: Customer, dropped: str, code: int
) -> None:
    data = {**customer.credentials(), "message": "hello"}
    del data[dropped]
    path = f"{ROOT}/{SERVICE}/{customer.chat_id}/send"
    assert await post(customer.http, path, data) == (400, {"errors": [{"code": code}]})


async def test_send_with_an_empty_message_is_400_code_162(customer: Customer) -> None:
    assert await customer.call("send", message="") == (400, {"errors": [{"code": 162}]})


async def test_send_appends_a_message_that_refresh_returns(customer: Customer) -> None:
    await customer.ok("send", message="hello", messageType="greeting")
    await customer.ok("send", message="again")
    body = await customer.refresh(transcriptPosition="2")
    assert events(body["messages"]) == [
        {
            "from": {"nickname": "First Last", "participantId": 1, "type": "Client"},
            "index": 2,
            "type": "Message",
            "text": "hello",
            "messageType": "greeting",
        },
        {
            "from": {"nickname": "First Last", "participantId": 1, "type": "Client"},
            "index": 3,
            "type": "Message",
            "text": "again",
            "messageType": None,
        },
    ]


async def test_send_without_transcript_position_replies_messages_null(
    customer: Customer,
) -> None:
    assert await customer.call("send", message="hello") == (200, reply(customer, None))


async def test_send_with_transcript_position_returns_the_events_from_it(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")  # index 2
    body = await customer.ok("send", message="hello", transcriptPosition="2")
    assert brief(body["messages"]) == [
        (2, "ParticipantJoined", "Agent", None),
        (3, "Message", "Client", "hello"),
    ]
    assert body["nextPosition"] == 4
    assert set(body) == {*REPLY_KEYS, "nextPosition"}
    body = await customer.ok("send", message="none", transcriptPosition="0")
    assert body["messages"] == [] and body["nextPosition"] == 5


@pytest.mark.parametrize("operation", ["refresh", "send"])
@pytest.mark.parametrize("position", ["-1", "abc", "1.5", "2x"])
async def test_a_negative_or_non_integer_transcript_position_is_400_code_308(
    customer: Customer, operation: str, position: str
) -> None:
    params = {"transcriptPosition": position, **VALID_PARAMS.get(operation, {})}
    assert await customer.call(operation, **params) == (400, {"errors": [{"code": 308}]})


async def test_a_transcript_position_of_any_length_past_the_end_returns_nothing(
    customer: Customer,
) -> None:
    for position in ("2", "0002", "9" * 40):
        body = await customer.refresh(transcriptPosition=position)
        assert body["messages"] == [] and body["nextPosition"] == 2
    status, body = await customer.call("readReceipt", transcriptPosition="9" * 40)
    assert status == 400 and body["errors"]


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_wrong_secure_key_is_249_on_every_operation(
    customer: Customer, operation: str
) -> None:
    params = {**VALID_PARAMS.get(operation, {}), "secureKey": "0" * 32}
    assert await customer.call(operation, **params) == (200, NOT_FOUND)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_user_id_of_another_chat_is_249_on_every_operation(
    env: Env, customer: Customer, operation: str
) -> None:
    other = await start_chat(env, nickname="other")
    params = {**VALID_PARAMS.get(operation, {}), "userId": other.user_id}
    assert await customer.call(operation, **params) == (200, NOT_FOUND)


async def test_an_unknown_chat_id_is_249(customer: Customer) -> None:
    customer.chat_id = "0001KaBWNVUV000K"
    assert await customer.call("refresh") == (200, NOT_FOUND)


async def test_an_empty_chat_id_is_400_code_154(customer: Customer) -> None:
    customer.chat_id = ""
    assert await customer.call("refresh") == (400, {"errors": [{"code": 154}]})


async def test_any_alias_is_accepted_and_the_reply_carries_the_current_alias(
    customer: Customer,
) -> None:
    body = await customer.ok("send", message="hi", alias="some-other-node")
    assert body["alias"] == ALIAS


@pytest.mark.parametrize(
    ("operation", "kind"), [("startTyping", "TypingStarted"), ("stopTyping", "TypingStopped")]
)
async def test_typing_replies_messages_null_and_adds_the_typing_event_with_its_text(
    customer: Customer, operation: str, kind: str
) -> None:
    assert await customer.call(operation, message="hello, I ha") == (200, reply(customer, None))
    await customer.ok(operation)
    body = await customer.refresh(transcriptPosition="2")
    assert brief(body["messages"]) == [
        (2, kind, "Client", "hello, I ha"),
        (3, kind, "Client", None),
    ]


async def test_refresh_at_position_0_returns_no_messages_and_the_next_position(
    customer: Customer,
) -> None:
    await customer.ok("send", message="hi")
    expected = reply(customer, [], nextPosition=3)
    assert await customer.call("refresh", transcriptPosition="0") == (200, expected)


async def test_refresh_at_position_1_or_without_one_returns_every_visible_event(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")
    await customer.ok("send", message="hi")
    expected = [
        (1, "ParticipantJoined", "Client", None),
        (2, "ParticipantJoined", "Agent", None),
        (3, "Message", "Client", "hi"),
    ]
    assert brief((await customer.refresh(transcriptPosition="1"))["messages"]) == expected
    assert brief((await customer.refresh())["messages"]) == expected


async def test_refresh_at_position_n_returns_exactly_the_visible_events_from_n_ascending(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")  # 2
    await env.chat.agent_event(customer.chat_id, "a1", m.MESSAGE, "hello")  # 3
    await env.chat.agent_event(customer.chat_id, "a1", m.NOTICE, "internal", visible=False)  # 4
    await customer.ok("send", message="hi")  # 5
    body = await customer.refresh(transcriptPosition="3")
    assert brief(body["messages"]) == [
        (3, "Message", "Agent", "hello"),
        (5, "Message", "Client", "hi"),
    ]
    assert (await customer.refresh(transcriptPosition="99"))["messages"] == []


async def test_next_position_counts_hidden_events_too(env: Env, customer: Customer) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")  # 2
    await env.chat.agent_event(customer.chat_id, "a1", m.MESSAGE, "hi")  # 3
    await env.chat.agent_event(customer.chat_id, "a1", m.NOTICE, "consult", visible=False)  # 4
    body = await customer.refresh(transcriptPosition="3")
    assert [event["index"] for event in body["messages"]] == [3]
    assert body["nextPosition"] == 5


async def test_two_refreshes_at_next_position_without_activity_return_nothing(
    customer: Customer,
) -> None:
    position = (await customer.refresh())["nextPosition"]
    for _ in range(2):
        body = await customer.refresh(transcriptPosition=str(position))
        assert body["messages"] == [] and body["nextPosition"] == position


@pytest.mark.parametrize("preview", ["hello, I have", ""])
async def test_refresh_with_message_and_typing_preview_on_adds_typing_started(
    env: Env, preview: str
) -> None:
    customer = await start_chat(env, PREVIEW)
    body = await customer.refresh(transcriptPosition="2", message=preview)
    assert brief(body["messages"]) == [(2, "TypingStarted", "Client", preview)]
    assert body["nextPosition"] == 3
    assert body["tenantName"] == "Resources"


async def test_refresh_with_message_and_typing_preview_off_adds_nothing(
    customer: Customer,
) -> None:
    body = await customer.refresh(message="hello, I have")
    assert brief(body["messages"]) == [(1, "ParticipantJoined", "Client", None)]
    assert body["nextPosition"] == 2
    assert "tenantName" not in body


async def test_refresh_after_the_agent_closes_returns_both_leaves_and_next_position_1(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")  # 2
    await env.chat.complete(customer.chat_id)  # 3, 4
    body = await customer.refresh(transcriptPosition="3")
    assert events(body["messages"]) == [
        {
            "from": {"nickname": "Maria", "participantId": 2, "type": "Agent"},
            "index": 3,
            "type": "ParticipantLeft",
        },
        {
            "from": {"nickname": "First Last", "participantId": 1, "type": "Client"},
            "index": 4,
            "type": "ParticipantLeft",
        },
    ]
    assert body["chatEnded"] is True and body["statusCode"] == 0 and body["nextPosition"] == 1


async def test_other_operations_after_the_chat_ended_are_249_with_chat_ended(
    env: Env, customer: Customer
) -> None:
    await env.chat.complete(customer.chat_id)
    assert await customer.call("send", message="too late") == (200, NOT_FOUND)
    assert await customer.call("startTyping") == (200, NOT_FOUND)


async def test_an_agent_hold_leave_carries_the_reason_and_the_chat_goes_on(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")
    await env.chat.agent_leave(customer.chat_id, "a1", m.HOLD)
    body = await customer.refresh(transcriptPosition="3")
    [left] = body["messages"]
    assert left["type"] == "ParticipantLeft"
    assert left["eventAttributes"] == {"general-properties": {"reason-for-leave": "HOLD"}}
    assert body["chatEnded"] is False


async def test_a_transfer_leave_carries_transfer_and_a_plain_leave_carries_no_reason(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")  # 2
    await env.chat.agent_join(customer.chat_id, "a2", "Bob")  # 3
    await env.chat.agent_leave(customer.chat_id, "a1", m.TRANSFER)  # 4
    await env.chat.agent_leave(customer.chat_id, "a2")  # 5, then the client's 6
    body = await customer.refresh(transcriptPosition="4")
    transfer, plain, client = body["messages"]
    assert transfer["eventAttributes"] == {"general-properties": {"reason-for-leave": "TRANSFER"}}
    assert plain["from"]["nickname"] == "Bob" and "eventAttributes" not in plain
    assert client["from"]["type"] == "Client" and body["chatEnded"] is True


async def test_a_strategy_message_comes_from_the_external_party(
    env: Env, customer: Customer
) -> None:
    await env.chat.external_event(customer.chat_id, "agent will be with you shortly")
    body = await customer.refresh(transcriptPosition="2")
    assert events(body["messages"]) == [
        {
            "from": {"nickname": "system", "participantId": 2, "type": "External"},
            "index": 2,
            "type": "Message",
            "text": "agent will be with you shortly",
            "messageType": None,
        }
    ]


async def test_disconnect_replies_exactly_all_null(customer: Customer) -> None:
    assert await customer.call("disconnect") == (200, DISCONNECTED)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_after_disconnect_every_operation_is_249_with_chat_ended(
    customer: Customer, operation: str
) -> None:
    await customer.ok("disconnect")
    params = VALID_PARAMS.get(operation, {})
    assert await customer.call(operation, **params) == (200, NOT_FOUND)


async def test_after_disconnect_the_agent_side_sees_the_client_leave_and_the_chat_ends(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")
    await customer.ok("disconnect")
    chat_id, event, actor = env.desk.events[-1]
    assert (chat_id, event.type, event.party.type, actor) == (
        customer.chat_id,
        "ParticipantLeft",
        "Client",
        "client",
    )
    session = await env.chat.store.load(customer.chat_id)
    assert session is not None and session.ended


async def test_push_url_requires_push_url_and_adds_a_push_url_event(
    customer: Customer,
) -> None:
    assert await customer.call("pushUrl") == (400, {"errors": [{"code": 163}]})
    body = await customer.ok("pushUrl", pushUrl="url.to.see")
    assert body["messages"] is None and body["chatEnded"] is False
    refreshed = await customer.refresh(transcriptPosition="2")
    assert brief(refreshed["messages"]) == [(2, "PushUrl", "Client", "url.to.see")]


async def test_update_nickname_adds_nickname_updated_and_renames_later_events(
    customer: Customer,
) -> None:
    assert await customer.call("updateNickname") == (400, {"errors": [{"code": 161}]})
    body = await customer.ok("updateNickname", nickname="newName")
    assert body["messages"] is None
    await customer.ok("send", message="hi")
    messages = (await customer.refresh())["messages"]
    assert [(e["type"], e["from"]["nickname"], e.get("text")) for e in messages] == [
        ("ParticipantJoined", "First Last", None),
        ("NicknameUpdated", "newName", "newName"),
        ("Message", "newName", "hi"),
    ]


async def test_custom_notice_works_with_and_without_a_message(customer: Customer) -> None:
    assert (await customer.ok("customNotice", message="custom message"))["messages"] is None
    await customer.ok("customNotice")
    body = await customer.refresh(transcriptPosition="2")
    assert brief(body["messages"]) == [
        (2, "CustomNotice", "Client", "custom message"),
        (3, "CustomNotice", "Client", None),
    ]


async def test_update_data_requires_user_data_merges_it_and_adds_no_event(
    env: Env, customer: Customer
) -> None:
    assert await customer.call("updateData") == (400, {"errors": [{"code": 105}]})
    await customer.ok("updateData", **{"userData[key1]": "value1", "userData[key2]": "v"})
    body = await customer.ok("updateData", **{"userData[key2]": "value2"})
    assert body == reply(customer, None)
    assert (await env.chat.load(customer.chat_id)).user_data == {
        "key1": "value1",
        "key2": "value2",
    }
    assert (await customer.refresh())["nextPosition"] == 2


async def test_read_receipt_moves_the_read_mark_without_a_client_visible_event(
    env: Env, customer: Customer
) -> None:
    status, body = await customer.call("readReceipt")
    assert status == 400 and body["errors"]
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")
    await env.chat.agent_event(customer.chat_id, "a1", m.MESSAGE, "hello")  # 3
    body = await customer.ok("readReceipt", transcriptPosition="3")
    assert body["messages"] is None and body["chatEnded"] is False
    assert (await env.chat.load(customer.chat_id)).read_mark == 3
    assert (await customer.refresh())["nextPosition"] == 4


@pytest.mark.parametrize("position", ["2", "9", "0", "-1"])
async def test_read_receipt_outside_the_transcript_is_400(
    customer: Customer, position: str
) -> None:
    status, body = await customer.call("readReceipt", transcriptPosition=position)
    assert status == 400 and body["errors"]


async def test_times_are_epoch_ms_indexes_increase_and_every_join_gets_a_new_party_id(
    env: Env, customer: Customer
) -> None:
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")
    await env.chat.agent_leave(customer.chat_id, "a1", m.TRANSFER)
    await env.chat.agent_join(customer.chat_id, "a1", "Maria")
    await customer.ok("send", message="hi")
    messages = (await customer.refresh())["messages"]
    events(messages)  # checks utcTime
    indexes = [event["index"] for event in messages]
    assert indexes == sorted(set(indexes))
    joins = [e["from"]["participantId"] for e in messages if e["type"] == "ParticipantJoined"]
    assert joins == [1, 2, 3]


async def test_after_a_key_rotation_replies_carry_the_new_key_and_the_old_one_expires(
    env: Env, customer: Customer
) -> None:
    rotated = await env.chat.rotate_secure_key(customer.chat_id)
    assert rotated.secure_key != customer.secure_key
    assert (await customer.refresh())["secureKey"] == rotated.secure_key  # old key, in grace
    await asyncio.sleep(GRACE_S + 0.1)
    assert await customer.call("refresh") == (200, NOT_FOUND)
    customer.secure_key = rotated.secure_key
    assert (await customer.refresh())["secureKey"] == rotated.secure_key


async def test_idle_chats_get_an_idle_alert_then_an_idle_close_that_ends_them(
    env: Env,
) -> None:
    customer = await start_chat(env, IDLE)
    await customer.ok("send", message="anyone?")  # the timers count from the last Message
    async with asyncio.timeout(3):
        while not (body := await customer.refresh(transcriptPosition="3"))["chatEnded"]:
            await asyncio.sleep(0.1)
    assert brief(body["messages"]) == [
        (3, "IdleAlert", "External", "Are you still there?"),
        (4, "IdleClose", "External", "The chat was closed for inactivity."),
    ]
    assert body["statusCode"] == 0 and body["nextPosition"] == 1


# -- request rules (spec §1.2, §1.3, §1.7) -----------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_every_operation_accepts_a_multipart_body(customer: Customer, operation: str) -> None:
    fields = {**customer.credentials(), **VALID_PARAMS.get(operation, {})}
    path = f"{ROOT}/{SERVICE}/{customer.chat_id}/{operation}"
    status, body = await post(customer.http, path, multipart(fields))
    assert status == 200 and body["statusCode"] == 0, body


async def test_query_parameters_are_merged_and_the_body_wins(customer: Customer) -> None:
    path = f"{ROOT}/{SERVICE}/{customer.chat_id}/send"
    query = {**customer.credentials(), "message": "from query", "messageType": "q"}
    status, body = await post(customer.http, path, {"message": "from body"}, params=query)
    assert status == 200 and body["statusCode"] == 0
    [event] = (await customer.refresh(transcriptPosition="2"))["messages"]
    assert (event["text"], event["messageType"]) == ("from body", "q")


async def test_a_repeated_user_data_key_keeps_its_last_value(env: Env, customer: Customer) -> None:
    raw = "userData%5Bk%5D=first&userData%5Bk%5D=last&userData%5B%5D=empty-key"
    path = f"{ROOT}/{SERVICE}/{customer.chat_id}/updateData"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = await post(env.http, path, raw, params=customer.credentials(), headers=headers)
    assert status == 200 and body["statusCode"] == 0
    assert (await env.chat.load(customer.chat_id)).user_data == {"k": "last", "": "empty-key"}


@pytest.mark.parametrize("path", ["", "/0001KaBWNVUV000K/refresh"])
async def test_a_body_of_another_content_type_is_415(env: Env, path: str) -> None:
    async with env.http.post(f"{ROOT}/{SERVICE}{path}", json={"nickname": "a"}) as response:
        assert response.status == 415


async def test_an_empty_body_fails_validation(env: Env) -> None:
    assert await post(env.http, f"{ROOT}/{SERVICE}") == (400, {"errors": [{"code": 161}]})


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_methods_other_than_post_are_405(env: Env, method: str) -> None:
    async with env.http.request(method, f"{ROOT}/{SERVICE}/x/refresh") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]


async def test_a_cors_preflight_from_a_widget_origin_is_allowed_with_credentials(
    env: Env,
) -> None:
    headers = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    async with env.http.options(f"{ROOT}/{SERVICE}/x/send", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "content-type,authorization"
    origin = {"Origin": "https://shop.example"}
    async with env.http.post(f"{ROOT}/{SERVICE}", data={"nickname": "a"}, headers=origin) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, basic("widget", "wrong"), basic("nobody", "s3cret"), {"Authorization": "Basic !"}],
)
async def test_a_basic_auth_service_refuses_missing_or_wrong_credentials_with_401(
    env: Env, headers: dict[str, str]
) -> None:
    async with env.http.post(
        f"{ROOT}/{SECURED}", data={"nickname": "a"}, headers=headers
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="GMS"'


async def test_a_basic_auth_service_serves_valid_credentials_before_validating(
    env: Env,
) -> None:
    auth = basic("widget", "s3cret")
    status, body = await post(env.http, f"{ROOT}/{SECURED}", {"nickname": "a"}, headers=auth)
    assert status == 200 and body["statusCode"] == 0
    path = f"{ROOT}/{SECURED}/{body['chatId']}/refresh"
    assert (await post(env.http, path, {}, headers=auth))[0] == 400  # auth passed, then 400
    async with env.http.post(path, data={}) as response:  # 401 comes before validation
        assert response.status == 401
