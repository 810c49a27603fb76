"""Chat v1 mobile background state (spec-chat-v1 §5), end to end: a real CometD client
(aiocometd-ng, long-polling, `gms_user` header and `ext.transcriptPosition`) goes to the
background, misses agent messages, gets the push on a local HTTP receiver, comes back and
receives exactly what it missed; on the memory and the Redis stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from chat import model as m
from chat.chat_v1 import comet_notification, transcript_interaction
from chat.chat_v1_cometd import BackgroundOptions, fit, position_of
from chat.config import ChatConfig, ServiceConfig
from chat.gms_user import notify_gms_user
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


LOCALIZATION = """<messages>
  <message id="chat.newmessage">
    <locale language="en_US"><entry key="text">Your agent wrote</entry></locale>
    <locale language="fr"><entry key="text">Votre conseiller a \\u00e9crit</entry></locale>
  </message>
</messages>"""


def config(sink: Receiver, localization: Path) -> ChatConfig:
    localization.write_text(LOCALIZATION, encoding="utf-8")
    push = {
        "pushEnabled": "customhttp,httpcb",
        "customhttp.url": f"{sink.url}/push",
        "localization_file": str(localization),
    }
    return ChatConfig(
        services={"customer-support": ServiceConfig("customer-support")},
        utc_time_resolution="ms",  # events a few ms apart fall on either side of a loss
        sections={
            "push": push,
            "service.request-chat": {"_client_timeout_notification": "0.2"},
            "service.bonjour": {
                "_client_timeout_notification": "0",
                "_client_timeout_notification_message": "chat.newmessage",
            },
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
    request: pytest.FixtureRequest, redis_server: RedisServer, sink: Receiver, tmp_path: Path
) -> AsyncIterator[V1Env]:
    cfg = config(sink, tmp_path / "localization.xml")
    async with v1_env(request.param, redis_server, cfg) as running:
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


async def test_an_event_between_handshake_and_first_connect_arrives_once(env: V1Env) -> None:
    """The race: the agent writes after the returning client's handshake bound it to its user
    and before its first /meta/connect; that event is in the replay, and only there. A late
    copy (as another node's delivery through Redis may be) is dropped too."""
    service_id, chat_id = await env.start_chat("joan", **PUSH_FORM)
    tag = f"service.chat.refresh.{service_id}"
    await env.chat.agent_join(chat_id, "ann", "Ann")
    phone = PipelineClient(env.bayeux)
    phone.context.headers = {"gms_user": "joan"}
    await phone.handshake()
    await phone.request("/meta/disconnect", ext={"transcriptPosition": 2})
    await env.comet.settle()
    await agent_says(env, chat_id, "missed")  # index 4, after the client's notice at 3

    back = PipelineClient(env.bayeux)
    back.context.headers = {"gms_user": "joan"}
    await back.handshake()
    await agent_says(env, chat_id, "between")  # delivered live to the new session: held
    stale = await env.chat.load(chat_id)
    delivered, _ = await back.connect(ext={"transcriptPosition": "2"})
    await env.comet.settle()
    await notify_gms_user(env.bayeux, "joan", _refresh(service_id, stale, 5, "between"))
    await agent_says(env, chat_id, "after")
    messages = delivered + await back.poll()
    assert [(d["data"]["tag"], [r[2] for r in shown(d)]) for d in messages] == [
        (tag, ["missed", "between"]),
        (tag, ["after"]),
    ]


def _refresh(service_id: str, session: m.ChatSession, position: int, text: str) -> Json:
    """A chat message of the v1 comet shape at `position`, as a node would send it."""
    row = ["Message.Text", "Ann", text, "1", "AGENT"]
    message = transcript_interaction(session, position, [row])
    return comet_notification(service_id, message)


async def test_a_return_after_a_network_loss_resumes_from_the_estimated_position(
    env: V1Env, sink: Receiver
) -> None:
    """The session expired (no /meta/disconnect): not the background state (no notice, no
    push), but a return without `ext.transcriptPosition` gets what followed the loss."""
    _, chat_id = await env.start_chat("joan", **PUSH_FORM)
    await env.chat.agent_join(chat_id, "ann", "Ann")
    lost = PipelineClient(env.bayeux)
    lost.context.headers = {"gms_user": "joan"}
    await lost.handshake()
    await lost.connect()
    await env.comet.settle()
    await agent_says(env, chat_id, "seen")
    await asyncio.sleep(0.02)  # it reaches the client a little later: the client's last sign
    assert [r[2] for d in await lost.poll() for r in shown(d)] == ["seen"]
    env.bayeux.remove_session(env.bayeux.sessions[lost.client_id], "expired")
    await env.comet.settle()
    await agent_says(env, chat_id, "missed")

    back = PipelineClient(env.bayeux)
    back.context.headers = {"gms_user": "joan"}
    await back.handshake()
    delivered, _ = await back.connect()
    await env.comet.settle()
    assert [[r[2] for r in shown(d)] for d in delivered + await back.poll()] == [["missed"]]
    session = await env.chat.load(chat_id)
    assert [ev.text for ev in await env.chat.transcript(session, 2)] == [None, "seen", "missed"]
    assert sink.requests == []


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


async def go_background(env: V1Env, user: str, position: int) -> None:
    """A session of `user` sends `/meta/disconnect` with `ext.transcriptPosition`."""
    phone = PipelineClient(env.bayeux)
    phone.context.headers = {"gms_user": user}
    await phone.handshake()
    await phone.request("/meta/disconnect", ext={"transcriptPosition": position})
    await env.comet.settle()


async def test_the_push_message_is_in_the_push_language(env: V1Env, sink: Receiver) -> None:
    """`push_notification_language`: the service's push text is a localization message id."""
    form = PUSH_FORM | {"push_notification_language": "fr-FR"}
    service_id, chat_id = await env.start_chat("joan", service="bonjour", **form)
    await env.chat.agent_join(chat_id, "ann", "Ann")
    await go_background(env, "joan", 2)
    await agent_says(env, chat_id, "ça va ?")
    [push] = await sink.wait_for(1)
    assert pushed(push) == {
        "message": "Votre conseiller a écrit",
        "serviceId": service_id,
        "lastTranscript": [{"Message.Text": "ça va ?"}],
    }


async def test_a_subscription_id_gets_the_background_pushes(env: V1Env, sink: Receiver) -> None:
    """`subscriptionID` without `push_notification_deviceid`: the pushes go to that Notification
    API subscription's target (here httpcb), in its language unless the chat gives one."""
    subscription = await env.post(
        "/genesys/1/notification/subscription",
        json={
            "subscriberId": "joan-phone",
            "filter": "chat.*",
            "notificationDetails": {"type": "httpcb", "deviceId": f"{sink.url}/callback"},
            "language": "fr",
        },
    )
    assert subscription.status == 200, subscription
    form = {"notify_by": "comet", "subscriptionID": subscription.body["id"]}
    service_id, chat_id = await env.start_chat("joan", service="bonjour", **form)
    await env.chat.agent_join(chat_id, "ann", "Ann")
    await go_background(env, "joan", 2)
    await agent_says(env, chat_id, "hello?")
    [push] = await sink.wait_for(1)
    assert push.path == "/callback"
    assert push.json() == {
        "message": "Votre conseiller a écrit",
        "serviceId": service_id,
        "lastTranscript": [{"Message.Text": "hello?"}],
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
