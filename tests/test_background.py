"""Chat v1 mobile background state (spec-chat-v1 §5), end to end: a real CometD client
(aiocometd-ng, long-polling, `gms_user` header and `ext.transcriptPosition`) goes to the
background, misses agent messages, gets the push on a local HTTP receiver, comes back and
receives exactly what it missed; on the memory and the Redis stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from chat import model as m
from chat.chat_v1_cometd import BackgroundOptions, fit, position_of
from chat.config import ChatConfig, ServiceConfig
from tests.conftest import PipelineClient
from tests.support.chat_v1 import STORES, Json, V1Env, mobile_client, receive, v1_env
from tests.support.receiver import Receiver, receiver
from tests.support.redis_server import RedisServer

# aiocometd-ng calls aiohttp with arguments aiohttp has deprecated (receive_timeout, ssl=None).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:aiohttp.client")

PUSH = "chat.newagentmessage"
PUSH_FORM = {
    "notify_by": "comet",
    "push_notification_deviceid": "device-1",
    "push_notification_type": "customhttp",
}


def config(sink: Receiver) -> ChatConfig:
    return ChatConfig(
        services={"customer-support": ServiceConfig("customer-support")},
        sections={
            "push": {"pushEnabled": "customhttp,httpcb", "customhttp.url": f"{sink.url}/push"},
            "service.request-chat": {"_client_timeout_notification": "0.2"},
            "service.slow": {
                "_client_timeout_notification": "0.5",
                "_agent_timeout_notification_message": "Joan stepped away",
            },
        },
    )


@pytest.fixture
async def sink() -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running


@pytest.fixture(params=STORES)
async def env(
    request: pytest.FixtureRequest, redis_server: RedisServer, sink: Receiver
) -> AsyncIterator[V1Env]:
    async with v1_env(request.param, redis_server, config(sink)) as running:
        yield running


def cometd_url(env: V1Env) -> str:
    return f"{env.base}/genesys/cometd"


def shown(message: Json) -> list[list[str]]:
    """The rows of a `/_genesys` chat message without the seconds column."""
    return [[*r[:3], *r[4:]] for r in message["data"]["message"]["transcriptToShow"]]


def pushed(request: Any) -> Json:
    """The chat payload of one customhttp push (its `message` is a JSON string)."""
    body = request.json()
    assert body["deviceId"] == "device-1"
    payload: Json = orjson.loads(body["message"])
    return payload


async def agent_says(env: V1Env, chat_id: str, text: str) -> None:
    await env.chat.agent_event(chat_id, "ann", m.MESSAGE, text)


async def test_background_push_then_return_replays_exactly_what_was_missed(
    env: V1Env, sink: Receiver
) -> None:
    service_id, chat_id = await env.start_chat("joan", **PUSH_FORM)
    tag = f"service.chat.refresh.{service_id}"
    async with mobile_client(cometd_url(env), "bob") as (bystander, _):
        async with mobile_client(cometd_url(env), "joan") as (client, app):
            await env.chat.agent_join(chat_id, "ann", "Ann")
            await agent_says(env, chat_id, "hello")
            joined, hello = await receive(client), await receive(client)
            assert shown(joined) == [["Notice.Joined", "Ann", "has joined the session", "AGENT"]]
            assert shown(hello) == [["Message.Text", "Ann", "hello", "AGENT"]]
            assert hello["data"]["tag"] == tag
            assert hello["data"]["message"]["transcriptPosition"] == "3"
            app.leave_at = 3  # the app goes to the background
        await env.comet.settle()
        session = await env.chat.load(chat_id)
        [notice] = await env.chat.transcript(session, 4)
        assert (notice.type, notice.party.type, notice.text) == (
            m.CUSTOM_NOTICE,
            m.CLIENT,
            "customer is not online",
        )

        await env.chat.agent_event(chat_id, "ann", m.TYPING_STARTED)
        await agent_says(env, chat_id, "are you there?")
        [first] = await sink.wait_for(1)
        assert first.path == "/push"
        assert pushed(first) == {
            "message": "New message from Agent",
            "serviceId": service_id,
            "lastTranscript": [{"Message.Text": "are you there?"}],
        }
        await agent_says(env, chat_id, "hello?")  # after the first push: pushed at once
        second = (await sink.wait_for(2))[1]
        assert pushed(second)["lastTranscript"] == [{"Message.Text": "hello?"}]

        async with mobile_client(cometd_url(env), "joan", resume_from=3) as (client, _):
            missed = await receive(client)
            assert missed["channel"] == "/_genesys"
            assert missed["data"]["tag"] == tag
            assert missed["data"]["message"]["transcriptPosition"] == "7"
            assert shown(missed) == [
                ["Notice.TypingStarted", "Ann", "is typing", "AGENT"],
                ["Message.Text", "Ann", "are you there?", "AGENT"],
                ["Message.Text", "Ann", "hello?", "AGENT"],
            ]
            await agent_says(env, chat_id, "welcome back")
            live = await receive(client)
            assert shown(live) == [["Message.Text", "Ann", "welcome back", "AGENT"]]
            assert live["data"]["message"]["transcriptPosition"] == "8"
        await env.comet.settle()
        assert len(sink.requests) == 2  # back in the foreground: no more pushes
        with pytest.raises(TimeoutError):
            await receive(bystander, timeout=0.2)


async def test_returning_before_the_timer_sends_no_push(env: V1Env, sink: Receiver) -> None:
    _, chat_id = await env.start_chat("joan", service="slow", **PUSH_FORM)
    async with mobile_client(cometd_url(env), "joan") as (client, app):
        await env.chat.agent_join(chat_id, "ann", "Ann")
        await receive(client)
        app.leave_at = 2
    await env.comet.settle()
    session = await env.chat.load(chat_id)
    assert [ev.text for ev in await env.chat.transcript(session, 3)] == ["Joan stepped away"]
    await agent_says(env, chat_id, "still there?")
    # Back without ext.transcriptPosition: the replay starts where the app left.
    async with mobile_client(cometd_url(env), "joan") as (client, _):
        missed = await receive(client)
        assert shown(missed) == [["Message.Text", "Ann", "still there?", "AGENT"]]
    await asyncio.sleep(0.8)  # past the 0.5 s client timeout
    assert sink.requests == []


async def test_a_connect_with_a_position_replays_after_a_network_loss(env: V1Env) -> None:
    """No background: a client that lost its connection resumes from the position it had."""
    _, chat_id = await env.start_chat("joan", notify_by="comet")
    await env.chat.agent_join(chat_id, "ann", "Ann")
    for text in ("one", "two"):
        await agent_says(env, chat_id, text)
    client = PipelineClient(env.bayeux)
    client.context.headers = {"gms_user": "joan"}
    await client.handshake()
    delivered, _ = await client.connect(ext={"transcriptPosition": "3"})
    await env.comet.settle()
    [replay] = delivered + await client.poll()
    assert [r[2] for r in replay["data"]["message"]["transcriptToShow"]] == ["two"]


async def test_comet_push_type_notifies_the_users_other_sessions(env: V1Env) -> None:
    form = {"notify_by": "comet", "push_notification_type": "comet"}
    service_id, chat_id = await env.start_chat("joan", push_notification_deviceid="web", **form)
    await env.chat.agent_join(chat_id, "ann", "Ann")
    desktop = PipelineClient(env.bayeux)
    desktop.context.headers = {"gms_user": "joan"}
    await desktop.handshake()
    await desktop.connect()
    phone = PipelineClient(env.bayeux)
    phone.context.headers = {"gms_user": "joan"}
    await phone.handshake()
    await phone.connect()
    await phone.request("/meta/disconnect", ext={"transcriptPosition": 2})
    await env.comet.settle()
    await agent_says(env, chat_id, "ping")
    async with asyncio.timeout(3):
        while not (pushes := [d for d in await desktop.poll() if d["data"]["tag"] == PUSH]):
            await asyncio.sleep(0.05)
    assert pushes[0]["data"]["message"] == {
        "message": "New message from Agent",
        "serviceId": service_id,
        "lastTranscript": [{"Message.Text": "ping"}],
    }


def test_push_payloads_are_cut_to_the_maximum_size() -> None:
    def payload() -> Json:
        transcript = [{"Message.Text": "first " * 20}, {"Message.Text": "second " * 40}]
        return {"message": "New message from Agent", "serviceId": "s", "lastTranscript": transcript}

    assert fit(payload(), 4096) == payload()
    cut = fit(payload(), 200)
    assert len(orjson.dumps(cut)) <= 200
    [(kind, text)] = cut["lastTranscript"][0].items()
    assert kind == "Message.Text" and text.startswith("second") and text.endswith("…")
    tiny = fit(payload(), 60)
    assert tiny == {"message": "New message from Agent", "serviceId": "s"}


def test_filters_accept_the_documented_spellings() -> None:
    sections = {"push": {"filtering_chat_events": "Notice.TypingStart, Notice.Joined"}}
    cfg = ChatConfig(sections=sections)

    class Services:
        config = cfg
        services = {"request-chat": {}, "quiet": {"_filtering_chat_events": "Message.Text"}}

    options = BackgroundOptions.of(Services(), "request-chat")  # type: ignore[arg-type]
    assert options.filtered == {"Notice.TypingStarted", "Notice.Joined"}
    assert options.client_timeout_s == 30
    quiet = BackgroundOptions.of(Services(), "quiet")  # type: ignore[arg-type]
    assert quiet.filtered == {"Message.Text"}
    assert [position_of(v) for v in ("4", 4, "x", -1, True, None)] == [4, 4, None, None, None, None]
