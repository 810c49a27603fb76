"""Chat API v1 over REST (spec-chat-v1 §2-§3): every documented request and response, normalised
(ids, `startedAt` and the seconds column vary), on the memory and the Redis stores.

The agent side is driven through the ChatEngine, as the agent API would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import FormData

from chat import model as m
from chat.config import ChatConfig, ServiceConfig
from tests.conftest import PipelineClient
from tests.support.chat_v1 import ROOT, STORES, Json, V1Env, v1_env
from tests.support.redis_server import RedisServer

AVAILABLE = "Chat service is available"
STARTED = "2000-01-01T00:00:00Z"
"""What `normal` puts in place of `startedAt`."""

MakeEnv = Callable[..., Awaitable[V1Env]]


def config(fast: bool = True, **chat: Any) -> ChatConfig:
    services = {"customer-support": ServiceConfig("customer-support")}
    return ChatConfig(
        services=services, alias="117", enable_fast_chat_transcript_refresh=fast, **chat
    )


@pytest.fixture(params=STORES)
async def make_env(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[MakeEnv]:
    """`await make_env(config)`: the application on this test's store kind."""
    contexts: list[Any] = []

    async def make(cfg: ChatConfig | None = None) -> V1Env:
        context = v1_env(request.param, redis_server, cfg or config())
        contexts.append(context)
        return await context.__aenter__()

    yield make
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def env(make_env: MakeEnv) -> V1Env:
    return await make_env()


def normal(body: Json) -> Json:
    """The reply with `startedAt` fixed and each row's seconds column blanked."""
    body = dict(body)
    if "startedAt" in body:
        assert body["startedAt"].endswith("Z") and "T" in body["startedAt"], body
        body["startedAt"] = STARTED
    if "transcriptToShow" in body:
        rows = body["transcriptToShow"]
        assert all(r[3].isdigit() for r in rows), rows
        body["transcriptToShow"] = [[*r[:3], "", *r[4:]] for r in rows]
    return body


def transcript(position: int, rows: list[list[str]] | None, chat_id: str, **fields: Any) -> Json:
    reply: Json = {
        "chatIxnState": "TRANSCRIPT",
        "chatSessionId": chat_id,
        "transcriptPosition": str(position),
        "chatServiceMessage": AVAILABLE,
        "startedAt": STARTED,
    }
    if rows:
        reply["transcriptToShow"] = rows
    return reply | fields


async def agent_joins(env: V1Env, chat_id: str) -> None:
    await env.chat.agent_join(chat_id, "ann", "Kristi Sippola")


# -- starting ------------------------------------------------------------------------------------


async def test_request_chat_returns_the_service_id(env: V1Env) -> None:
    reply = await env.post("request-chat", {})
    assert reply.status == 200
    assert list(reply.body) == ["_id"]


async def test_request_chat_verbose_adds_the_create_url(env: V1Env) -> None:
    reply = await env.post("request-chat", {"_verbose": "true"})
    service_id = reply.body["_id"]
    assert reply.body == {
        "_id": service_id,
        "_chatIxnAPI-CREATE-URL": f"{ROOT}/{service_id}/ixn/chat",
    }


async def test_start_chat_is_connected_at_position_one(env: V1Env) -> None:
    service_id = await env.service()
    form = {"firstName": "Vasya", "lastName": "Pupkin", "subject": "test"}
    reply = await env.post(f"{service_id}/ixn/chat", form)
    assert reply.status == 200
    assert reply.body == {
        "chatIxnState": "CONNECTED",
        "chatSessionId": reply.body["chatSessionId"],
        "transcriptPosition": "1",
        "chatServiceMessage": AVAILABLE,
    }
    session = await env.chat.load(reply.body["chatSessionId"])
    assert session.client.nickname == "Vasya Pupkin"
    assert session.user_data == {"fldnFirstName": "Vasya", "fldnLastName": "Pupkin"}
    assert session.subject == "test"


async def test_start_chat_verbose_lists_every_url_of_the_chat(env: V1Env) -> None:
    service_id = await env.service()
    form = {"_verbose": "true", "userDisplayName": "JohnDoe", "clientTimeZoneOffset": "120"}
    reply = await env.post(f"{service_id}/ixn/chat", form)
    body = reply.body
    session = await env.chat.load(body["chatSessionId"])
    base = f"{ROOT}/{service_id}/ixn/chat"
    assert body == {
        "chatIxnState": "CONNECTED",
        "chatSessionId": session.chat_id,
        "transcriptPosition": "1",
        "chatServiceMessage": AVAILABLE,
        "userId": session.user_id,
        "secureKey": session.secure_key,
        "checkChatServiceLoadBalancerPath": "null",
        "chatServerLoadBalancerAlias": "117",
        "chatServerHost": "localhost",
        "chatWebApiPort": str(env.server.port),
        "isTLSrequired": "false",
        "clientTimeZoneOffset": "120",
        "_chatIxnAPI_SEND_URL": f"{base}/send",
        "_chatIxnAPI_REFRESH_URL": f"{base}/refresh",
        "_chatIxnAPI_START_TYPING_URL": f"{base}/startTyping",
        "_chatIxnAPI_STOP_TYPING_URL": f"{base}/stopTyping",
        "_chatIxnAPI_DISCONNECT_URL": f"{base}/disconnect",
        "_chatIxnAPI_REFRESH_FROM_START_URL": f"{base}/refresh?transcriptPosition=1",
        "_chatIxnAPI_SEND_CUSTOM_URL": f"{base}/customNotice",
    }
    assert session.client.nickname == "JohnDoe"


async def test_start_chat_takes_json_with_the_documented_names(env: V1Env) -> None:
    service_id = await env.service()
    body = {"first_name": "John", "last_name": "Doe", "subject": "GMSDemo", "_verbose": True}
    reply = await env.post(f"{service_id}/ixn/chat", json=body)
    assert reply.status == 200
    assert reply.body["chatIxnState"] == "CONNECTED"
    assert reply.body["_chatIxnAPI_SEND_URL"].endswith("/ixn/chat/send")
    session = await env.chat.load(reply.body["chatSessionId"])
    assert (session.client.nickname, session.subject) == ("John Doe", "GMSDemo")


async def test_start_chat_takes_multipart_and_query_parameters(env: V1Env) -> None:
    service_id = await env.service()
    form = FormData()
    form.add_field("FirstName", "John")
    form.add_field("LastName", "Harry")
    form.add_field("EmailAddress", "j.h@gmail.com")
    reply = await env.post(f"{service_id}/ixn/chat?subject=French", data=form)
    assert reply.status == 200
    session = await env.chat.load(reply.body["chatSessionId"])
    assert session.client.nickname == "John Harry"
    assert (session.subject, session.email) == ("French", "j.h@gmail.com")


async def test_a_client_without_any_name_is_named_by_its_address(env: V1Env) -> None:
    service_id = await env.service()
    reply = await env.post(f"{service_id}/ixn/chat", {"subject": "x"})
    session = await env.chat.load(reply.body["chatSessionId"])
    assert session.client.nickname == "127.0.0.1"


async def test_service_business_data_is_attached_to_the_chat(env: V1Env) -> None:
    service_id = await env.service(account="42", _verbose="false")
    reply = await env.post(f"{service_id}/ixn/chat", {"firstName": "A", "lastName": "B"})
    session = await env.chat.load(reply.body["chatSessionId"])
    assert session.user_data["account"] == "42"
    assert "_verbose" not in session.user_data


async def test_a_service_runs_one_chat(env: V1Env) -> None:
    service_id, _ = await env.start_chat()
    again = await env.post(f"{service_id}/ixn/chat", {"userDisplayName": "Joan"})
    assert again.status == 409
    assert "already started" in again.body["message"]


async def test_concurrent_starts_on_one_service_start_one_chat(
    env: V1Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five `ixn/chat` at once on one service session: one chat, four 409s (the claim is
    atomic in the session's store: under the event loop, or one Lua script in Redis). Chat
    creation is slowed down so that every request is past its first check before any chat
    exists."""
    started_chats: list[str] = []
    request_chat = env.chat.request_chat

    async def slow_request_chat(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.1)
        outcome = await request_chat(*args, **kwargs)
        started_chats.append(outcome.session.chat_id)
        return outcome

    monkeypatch.setattr(env.chat, "request_chat", slow_request_chat)
    service_id = await env.service()
    replies = await asyncio.gather(
        *(env.post(f"{service_id}/ixn/chat", {"userDisplayName": f"J{n}"}) for n in range(5))
    )
    assert sorted(r.status for r in replies) == [200, 409, 409, 409, 409]
    [started] = [r.body for r in replies if r.status == 200]
    assert all("already started" in r.body["message"] for r in replies if r.status == 409)
    assert started_chats == [started["chatSessionId"]]
    reply = await env.post(f"{service_id}/ixn/chat/send", {"message": "hi"})
    assert reply.body["chatSessionId"] == started["chatSessionId"]


async def test_a_start_that_fails_leaves_the_service_startable(env: V1Env) -> None:
    service_id = await env.service()
    bad = await env.post(f"{service_id}/ixn/chat", {"userDisplayName": "J", "email": "no"})
    assert bad.status == 400
    assert bad.body["message"] == "the e-mail address is invalid"
    assert (await env.post(f"{service_id}/ixn/chat", {"userDisplayName": "J"})).status == 200


async def test_message_replaces_the_join_and_leave_notices(env: V1Env) -> None:
    """`message` on `ixn/chat` and `disconnect`: the text of the client's own notice, which
    the agent sees in place of the standard one."""
    service_id, chat_id = await env.start_chat(message="Joan needs help with an order")
    reply = await env.post(f"{service_id}/ixn/chat/disconnect", {"message": "Joan had to go"})
    assert reply.body["chatIxnState"] == "DISCONNECTED"
    session = await env.chat.get(chat_id)
    assert session is not None
    events = await env.chat.transcript(session, 1)
    assert [(ev.type, ev.text) for ev in events] == [
        (m.PARTICIPANT_JOINED, "Joan needs help with an order"),
        (m.PARTICIPANT_LEFT, "Joan had to go"),
    ]


async def test_disconnect_after_the_chat_ended_is_the_documented_reply(env: V1Env) -> None:
    """GMS documents one disconnect reply; a chat the agent already closed (or that the client
    left before) gives it too, and the end then counts as shown: refresh is 404."""
    service_id, chat_id = await env.start_chat()
    await agent_joins(env, chat_id)
    await env.chat.complete(chat_id)  # the agent's Left and the client's Left: 3 and 4
    finished = {
        "chatIxnState": "DISCONNECTED",
        "chatSessionId": chat_id,
        "chatServiceMessage": "Chat was finished",
    }
    reply = await env.post(f"{service_id}/ixn/chat/disconnect")
    assert (reply.status, reply.body) == (200, finished | {"transcriptPosition": "4"})
    assert (await env.post(f"{service_id}/ixn/chat/refresh")).status == 404

    service_id, chat_id = await env.start_chat()
    first = await env.post(f"{service_id}/ixn/chat/disconnect")
    again = await env.post(f"{service_id}/ixn/chat/disconnect")
    alone = finished | {"chatSessionId": chat_id, "transcriptPosition": "1"}
    assert first.body == again.body == alone


async def test_push_types_that_cannot_be_delivered_are_refused_up_front(env: V1Env) -> None:
    service_id = await env.service()
    form = {"userDisplayName": "J", "push_notification_deviceid": "d"}
    orscb = await env.post(f"{service_id}/ixn/chat", form | {"push_notification_type": "orscb"})
    assert orscb.status == 400
    assert orscb.body["message"] == (
        "push_notification_type: Notification type 'orscb' is not supported: this server has "
        "no ORS to deliver events to"
    )
    other = await env.post(f"{service_id}/ixn/chat", form | {"push_notification_type": "pager"})
    assert other.status == 400
    assert other.body["message"].startswith("push_notification_type 'pager' is not one of ios")
    fine = await env.post(f"{service_id}/ixn/chat", form | {"push_notification_type": "Android"})
    assert fine.status == 200


async def test_an_unknown_subscription_id_is_refused(env: V1Env) -> None:
    service_id = await env.service()
    reply = await env.post(f"{service_id}/ixn/chat", {"subscriptionID": "nope"})
    assert reply.status == 400
    assert reply.body["message"] == "subscriptionID nope: no such subscription"


async def test_unknown_service_ids_are_404(env: V1Env) -> None:
    for path in ("no-such-id/ixn/chat", "no-such-id/ixn/chat/refresh"):
        reply = await env.post(path, {})
        assert reply.status == 404, path
        assert set(reply.body) == {"message", "exception"}
    service_id = await env.service()
    reply = await env.post(f"{service_id}/ixn/chat/refresh", {})
    assert reply.status == 404
    assert "no chat" in reply.body["message"]


async def test_bodies_of_other_types_are_415_and_bad_json_is_500(env: V1Env) -> None:
    service_id = await env.service()
    reply = await env.post(
        f"{service_id}/ixn/chat", data="hello", headers={"Content-Type": "text/plain"}
    )
    assert reply.status == 415
    reply = await env.post(
        f"{service_id}/ixn/chat",
        data=b'{"subject": ',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 500
    assert reply.body["message"].startswith("Could not read JSON")


# -- poll mode -------------------------------------------------------------------------------------


async def test_send_returns_the_transcript_from_the_position(env: V1Env) -> None:
    """Appendix A: the agent's join and the client's message, with their indexes."""
    service_id, chat_id = await env.start_chat(userDisplayName="")
    await agent_joins(env, chat_id)
    reply = await env.post(
        f"{service_id}/ixn/chat/send", {"transcriptPosition": "1", "message": "good"}
    )
    assert reply.status == 200
    rows = [
        ["Notice.Joined", "Kristi Sippola", "has joined the session", "", "AGENT", "2"],
        ["Message.Text", "127.0.0.1", "good", "", "CLIENT", "3"],
    ]
    assert normal(reply.body) == transcript(3, rows, chat_id)


async def test_refresh_shows_only_what_is_new_and_the_agent_side(env: V1Env) -> None:
    service_id, chat_id = await env.start_chat()
    await agent_joins(env, chat_id)
    await env.chat.agent_event(chat_id, "ann", m.TYPING_STARTED)
    await env.chat.agent_event(chat_id, "ann", m.MESSAGE, "hello customer")
    first = await env.post(f"{service_id}/ixn/chat/refresh", {"message": "hello agent"})
    assert normal(first.body) == transcript(
        5,
        [
            ["Notice.Joined", "Kristi Sippola", "has joined the session", "", "AGENT", "2"],
            ["Notice.TypingStarted", "Kristi Sippola", "is typing", "", "AGENT", "3"],
            ["Message.Text", "Kristi Sippola", "hello customer", "", "AGENT", "4"],
            ["Message.Text", "Joan", "hello agent", "", "CLIENT", "5"],
        ],
        chat_id,
    )
    nothing_new = await env.post(f"{service_id}/ixn/chat/refresh", {})
    assert normal(nothing_new.body) == transcript(5, None, chat_id)
    from_start = await env.post(f"{service_id}/ixn/chat/refresh?transcriptPosition=4", {})
    assert [r[5] for r in from_start.body["transcriptToShow"]] == ["4", "5"]


async def test_typing_and_custom_notices_return_their_own_event(env: V1Env) -> None:
    service_id, chat_id = await env.start_chat()
    start = await env.post(f"{service_id}/ixn/chat/startTyping")
    assert normal(start.body) == transcript(
        2, [["Notice.TypingStarted", "Joan", "is typing", "", "CLIENT", "2"]], chat_id
    )
    stop = await env.post(f"{service_id}/ixn/chat/stopTyping")
    assert normal(stop.body) == transcript(
        3, [["Notice.TypingStopped", "Joan", "stopped typing", "", "CLIENT", "3"]], chat_id
    )
    notice = await env.post(
        f"{service_id}/ixn/chat/customNotice?_verbose=true", {"message": "photo.png"}
    )
    assert notice.body["transcriptToShow"][0][:3] == ["Notice.Custom", "Joan", "photo.png"]
    assert notice.body["_chatIxnAPI_SEND_CUSTOM_URL"].endswith("/customNotice")


async def test_messages_and_notices_need_their_text(env: V1Env) -> None:
    service_id, _ = await env.start_chat()
    for operation in ("send", "customNotice"):
        reply = await env.post(f"{service_id}/ixn/chat/{operation}", {"message": " "})
        assert reply.status == 400, operation
        assert reply.body["message"] == "message is required"
    reply = await env.post(f"{service_id}/ixn/chat/refresh", {"transcriptPosition": "x"})
    assert reply.status == 400


async def test_rows_have_five_columns_without_fast_transcript_refresh(
    make_env: MakeEnv,
) -> None:
    env = await make_env(config(fast=False))
    service_id, chat_id = await env.start_chat()
    await agent_joins(env, chat_id)
    reply = await env.post(f"{service_id}/ixn/chat/refresh")
    assert normal(reply.body)["transcriptToShow"] == [
        ["Notice.Joined", "Kristi Sippola", "has joined the session", "", "AGENT"]
    ]


async def test_disconnect_finishes_and_refresh_is_then_404(env: V1Env) -> None:
    service_id, chat_id = await env.start_chat()
    await env.post(f"{service_id}/ixn/chat/send", {"message": "bye"})
    reply = await env.post(f"{service_id}/ixn/chat/disconnect")
    assert reply.body == {
        "chatIxnState": "DISCONNECTED",
        "chatSessionId": chat_id,
        "transcriptPosition": "2",
        "chatServiceMessage": "Chat was finished",
    }
    session = await env.chat.get(chat_id)
    assert session is not None and session.ended
    after = await env.post(f"{service_id}/ixn/chat/refresh")
    assert after.status == 404
    assert set(after.body) == {"message", "exception"}


async def test_an_agent_ending_the_chat_is_shown_once_then_404(env: V1Env) -> None:
    service_id, chat_id = await env.start_chat()
    await agent_joins(env, chat_id)
    await env.chat.agent_event(chat_id, "ann", m.MESSAGE, "goodbye")
    await env.chat.complete(chat_id)
    final = await env.post(f"{service_id}/ixn/chat/refresh")
    body = normal(final.body)
    assert body["chatIxnState"] == "DISCONNECTED"
    assert body["chatServiceMessage"] == "Chat was finished"
    assert [r[0] for r in body["transcriptToShow"]] == [
        "Notice.Joined",
        "Message.Text",
        "Notice.Left",
        "Notice.Left",
    ]
    assert (await env.post(f"{service_id}/ixn/chat/refresh")).status == 404
    assert (await env.post(f"{service_id}/ixn/chat/send", {"message": "hi"})).status == 404


# -- comet mode ------------------------------------------------------------------------------------


async def test_comet_refresh_answers_with_the_channel(make_env: MakeEnv) -> None:
    env = await make_env(config(fast=False))
    service_id, chat_id = await env.start_chat("BuzzBrain", notify_by="comet")
    plain = await env.post(f"{service_id}/ixn/chat/refresh", {"message": "hello agent"})
    assert plain.body == {"_id": service_id, "comet_channel": "/_genesys"}
    verbose = await env.post(
        f"{service_id}/ixn/chat/refresh?_verbose=true", {"message": "Hi Verbose"}
    )
    body = normal(verbose.body)
    assert "transcriptToShow" not in body
    assert body["comet_channel"] == "/_genesys"
    assert body["chatIxnState"] == "TRANSCRIPT"
    assert body["transcriptPosition"] == "3"
    assert body["secureKey"] == (await env.chat.load(chat_id)).secure_key


async def test_comet_mode_needs_a_gms_user(env: V1Env) -> None:
    service_id = await env.service()
    reply = await env.post(f"{service_id}/ixn/chat", {"notify_by": "comet"})
    assert reply.status == 400
    assert "gms_user" in reply.body["message"]


async def test_comet_events_reach_only_that_users_genesys_sessions(env: V1Env) -> None:
    owner = PipelineClient(env.bayeux)
    owner.context.headers = {"gms_user": "BuzzBrain"}
    other = PipelineClient(env.bayeux)
    other.context.headers = {"gms_user": "someone-else"}
    for client in (owner, other):
        await client.handshake()
        await client.connect()
        assert (await client.subscribe("/_genesys"))["successful"] is True
    await env.comet.settle()
    service_id, chat_id = await env.start_chat("BuzzBrain", notify_by="comet")
    await agent_joins(env, chat_id)
    await env.post(f"{service_id}/ixn/chat/send", {"message": "Hi"})
    delivered = await owner.poll()
    tag = f"service.chat.refresh.{service_id}"
    assert [d["data"]["tag"] for d in delivered] == [tag, tag]
    assert all(d["channel"] == "/_genesys" and len(d["data"]["id"]) == 32 for d in delivered)
    messages = [normal(d["data"]["message"]) for d in delivered]
    assert messages == [
        transcript(
            2,
            [["Notice.Joined", "Kristi Sippola", "has joined the session", "", "AGENT", "2"]],
            chat_id,
        ),
        transcript(3, [["Message.Text", "Joan", "Hi", "", "CLIENT", "3"]], chat_id),
    ]
    assert await other.poll() == []


async def test_comet_chat_end_is_notified_as_disconnected(env: V1Env) -> None:
    owner = PipelineClient(env.bayeux)
    owner.context.headers = {"gms_user": "u1"}
    await owner.handshake()
    await owner.connect()
    await env.comet.settle()
    _, chat_id = await env.start_chat("u1", notify_by="comet")
    await agent_joins(env, chat_id)
    await env.chat.complete(chat_id)
    last = (await owner.poll())[-1]["data"]["message"]
    assert (last["chatIxnState"], last["chatServiceMessage"]) == (
        "DISCONNECTED",
        "Chat was finished",
    )
    assert [r[0] for r in last["transcriptToShow"]] == ["Notice.Left", "Notice.Left"]


def test_canonical_examples_decode() -> None:
    """The JSON this suite compares against is what GMS documents (a guard on the helper)."""
    documented = orjson.loads(
        b'{"chatIxnState":"TRANSCRIPT","transcriptPosition":"3","chatSessionId":"c",'
        b'"transcriptToShow":[["Message.Text","127.0.0.1","good","35","CLIENT","3"]],'
        b'"startedAt":"2016-06-01T14:51:37Z","chatServiceMessage":"Chat service is available"}'
    )
    assert normal(documented) == transcript(
        3, [["Message.Text", "127.0.0.1", "good", "", "CLIENT", "3"]], "c"
    )
