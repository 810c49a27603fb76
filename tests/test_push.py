"""Push providers against a local receiver, and the Chat v2 push notifier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from chat.chat_push import ChatPushNotifier
from chat.config import ChatConfig
from chat.engine import Cause, ChatEngine
from chat.model import Binding
from chat.push import PushError, PushMessage, PushService, parse_enabled, resolve_options
from chat.store import MemoryChatStore
from tests.support.receiver import Receiver, receiver


@pytest.fixture
async def sink() -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running


def service_for(sink: Receiver, **push: str) -> PushService:
    sections = {
        "push": {
            "pushEnabled": '"customhttp,httpcb,fcm,ios"',
            "customhttp.url": f"{sink.url}/custom",
            "fcm.url": f"{sink.url}/fcm",
            "fcm": "fcm-secrets",
            "apple.url": f"{sink.url}/apns",
            "apple.topic": "com.example.chat",
            **push,
        },
        "fcm-secrets": {"password": "server-key"},
    }
    return PushService(sections, retries=2)


def test_push_enabled_lists_are_normalised() -> None:
    assert parse_enabled('"ios, fcm"') == ("ios", "fcm")
    assert parse_enabled("android") == ("gcm",)
    assert parse_enabled(None) == ("comet", "httpcb", "orscb")


def test_options_resolve_along_the_documented_chain() -> None:
    sections = {
        "push": {"fcm.title": "base", "fcm.body": "base"},
        "push.provider.event.A2C": {"fcm.title": "generic A2C"},
        "push.provider.event.A2C.service.internal": {"fcm.title": "not a prefix"},
        "push.provider.SalesApp": {"fcm.body": "provider"},
        "push.provider.SalesApp.event.A2C.service.statuschanged": {"fcm.title": "specific"},
    }
    tag = "A2C.service.statuschanged.agentavailable"
    options = resolve_options(sections, "SalesApp", tag)
    assert options["fcm.title"] == "specific"
    assert options["fcm.body"] == "provider"
    assert resolve_options(sections, None, tag)["fcm.title"] == "generic A2C"


async def test_customhttp_posts_message_and_device_with_basic_auth(sink: Receiver) -> None:
    push = service_for(sink)
    message = PushMessage("customhttp", "device-1", "hello", authorization="dXNlcjpwdw==")
    await push.send(message)
    await push.close()
    [request] = sink.requests
    assert request.path == "/custom"
    assert request.json() == {"message": "hello", "deviceId": "device-1"}
    assert request.headers["Authorization"] == "Basic dXNlcjpwdw=="


async def test_customhttp_requests_to_one_url_are_sequential_and_in_order(sink: Receiver) -> None:
    push = service_for(sink)
    sink.delay = 0.02
    await asyncio.gather(*(push.send(PushMessage("customhttp", "d", str(i))) for i in range(8)))
    await push.close()
    assert [r.json()["message"] for r in sink.requests] == [str(i) for i in range(8)]


async def test_httpcb_posts_the_plain_message_to_the_callback_url(sink: Receiver) -> None:
    push = service_for(sink)
    await push.send(PushMessage("httpcb", f"{sink.url}/hook/7", "plain text"))
    await push.close()
    assert sink.requests[0].path == "/hook/7"
    assert sink.requests[0].body == b"plain text"


async def test_fcm_sends_notification_and_data_with_the_referenced_key(sink: Receiver) -> None:
    push = service_for(sink)
    await push.send(PushMessage("fcm", "token-9", '{"a":1}', title="T", body="B"))
    await push.close()
    [request] = sink.requests
    assert request.headers["Authorization"] == "key=server-key"
    assert request.json() == {
        "to": "token-9",
        "data": {"message": '{"a":1}'},
        "notification": {"title": "T", "body": "B"},
    }


async def test_ios_sends_aps_alert_and_message_to_the_device_path(sink: Receiver) -> None:
    push = service_for(sink)
    props = {"apple.badge": "3", "apple.sound": "ping"}
    await push.send(PushMessage("ios", "abc123", "m", title="T", body="B", properties=props))
    await push.close()
    [request] = sink.requests
    assert request.path == "/apns/3/device/abc123"
    assert request.headers["apns-topic"] == "com.example.chat"
    assert request.json() == {
        "aps": {"alert": {"title": "T", "body": "B"}, "badge": 3, "sound": "ping"},
        "message": "m",
    }


async def test_failures_are_retried_then_reported(sink: Receiver) -> None:
    push = service_for(sink)
    sink.statuses = [503, 500]
    await push.send(PushMessage("customhttp", "d", "eventually"))
    assert len(sink.requests) == 3
    sink.statuses = [503, 503, 503]
    with pytest.raises(PushError):
        await push.send(PushMessage("customhttp", "d", "never"))
    await push.close()


async def test_a_type_not_in_push_enabled_is_refused(sink: Receiver) -> None:
    push = service_for(sink, pushEnabled="fcm")
    with pytest.raises(PushError, match="not enabled"):
        await push.send(PushMessage("customhttp", "d", "x"))
    await push.close()
    assert sink.requests == []


# -- Chat v2 push notifications --------------------------------------------------------------

PUSH_KEYS = {"push_notification_deviceid": "dev-42", "push_notification_type": "customhttp"}


async def chat_with_push(
    sink: Receiver, config: ChatConfig | None = None, connected: bool = False
) -> tuple[ChatEngine, PushService, str]:
    config = config or ChatConfig()
    push = service_for(sink)
    config.sections = push.sections
    engine = ChatEngine(config, MemoryChatStore())
    engine.observers.append(ChatPushNotifier(config, push, lambda session: connected))
    await engine.start()
    outcome = await engine.request_chat(
        "customer-support",
        nickname="Ann",
        first_name=None,
        last_name=None,
        cause=Cause("client", "cometd", "c1"),
        binding=Binding("c1", "memory"),
        push=PUSH_KEYS,
    )
    return engine, push, outcome.session.chat_id


def pushed(sink: Receiver) -> list[dict[str, object]]:
    return [orjson.loads(r.json()["message"]) for r in sink.requests]


async def test_agent_events_are_pushed_with_the_documented_texts(sink: Receiver) -> None:
    engine, push, chat_id = await chat_with_push(sink)
    await engine.agent_join(chat_id, "a1", "Bob")
    await engine.agent_event(chat_id, "a1", "Message", "Your order shipped")
    await engine.agent_event(chat_id, "a1", "PushUrl", "http://example.com/track")
    await sink.wait_for(3)
    payloads = pushed(sink)
    assert [(p["title"], p["body"]) for p in payloads] == [
        ("Chat participants changed", "Bob joined chat"),
        ("Bob sent new message", "Your order shipped"),
        ("Bob suggests Web page", "http://example.com/track"),
    ]
    assert all(r.json()["deviceId"] == "dev-42" for r in sink.requests)
    assert "secureKey" not in sink.requests[0].body.decode()
    await engine.close()
    await push.close()


async def test_client_typing_notice_and_hidden_events_are_not_pushed(sink: Receiver) -> None:
    engine, push, chat_id = await chat_with_push(sink)
    await engine.client_event(chat_id, "Message", "my own message")
    await engine.agent_join(chat_id, "a1", "Bob")
    await engine.agent_event(chat_id, "a1", "TypingStarted")
    await engine.agent_event(chat_id, "a1", "CustomNotice", "x")
    await engine.agent_event(chat_id, "a1", "Notice", "y")
    await engine.agent_event(chat_id, "a1", "Message", "internal", visible=False)
    await engine.agent_event(chat_id, "a1", "Message", "visible")
    await sink.wait_for(2)
    await asyncio.sleep(0.1)
    assert [p["event"]["type"] for p in pushed(sink)] == ["ParticipantJoined", "Message"]  # type: ignore[index]
    assert pushed(sink)[1]["body"] == "visible"
    await engine.close()
    await push.close()


async def test_push_to_active_client_only_pushes_while_no_cometd_client(sink: Receiver) -> None:
    config = ChatConfig(push_notification_to_active_client=True)
    engine, push, chat_id = await chat_with_push(sink, config, connected=True)
    await engine.agent_join(chat_id, "a1", "Bob")
    await asyncio.sleep(0.1)
    assert sink.requests == []
    await engine.close()
    await push.close()


async def test_event_level_sections_override_texts_with_the_sender_name(sink: Receiver) -> None:
    config = ChatConfig()
    engine, push, chat_id = await chat_with_push(sink, config)
    push.sections["push.provider.event.chat.customer-support.Message"] = {
        "title": "%s wrote",
    }
    await engine.agent_join(chat_id, "a1", "Bob")
    await engine.agent_event(chat_id, "a1", "Message", "hi")
    await sink.wait_for(2)
    assert pushed(sink)[1]["title"] == "Bob wrote"
    await engine.close()
    await push.close()


async def test_rest_created_chats_never_push(sink: Receiver) -> None:
    push = service_for(sink)
    config = ChatConfig(sections=push.sections)
    engine = ChatEngine(config, MemoryChatStore())
    engine.observers.append(ChatPushNotifier(config, push, lambda session: False))
    await engine.start()
    outcome = await engine.request_chat(
        "customer-support", nickname="Ann", first_name=None, last_name=None, push=PUSH_KEYS
    )
    await engine.agent_join(outcome.session.chat_id, "a1", "Bob")
    await asyncio.sleep(0.1)
    assert sink.requests == []
    await engine.close()
    await push.close()
