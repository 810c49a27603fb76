"""The server pipeline, driven through `BayeuxServer.handle_batch` with no transport at all."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from bayeux import BayeuxServer, Extension, Message, RequestContext, ServerSession, ServiceRequest
from bayeux import protocol as p
from tests.conftest import (
    TIMEOUT_MS,
    PipelineClient,
    ServerFactory,
    assert_refused,
    connected_client,
    fast_options,
    wait_until,
)

SUBSCRIBE_DENIED = re.compile(r"^403:[^:]*:subscribe_denied$")


def now() -> float:
    return asyncio.get_running_loop().time()


# -- handshake ---------------------------------------------------------------------------------


async def test_handshake_reply_carries_client_id_version_connection_types_and_advice(
    server: BayeuxServer,
) -> None:
    client = PipelineClient(server)
    reply = await client.handshake()
    client_id = reply.pop("clientId")
    assert reply == {
        "channel": "/meta/handshake",
        "id": "1",
        "successful": True,
        "version": "1.0",
        "supportedConnectionTypes": ["websocket", "long-polling", "callback-polling"],
        "advice": {"reconnect": "retry", "interval": 0, "timeout": TIMEOUT_MS},
    }
    assert p.is_valid_client_id(client_id) and len(client_id) == 32
    assert client_id in server.sessions


async def test_each_handshake_gets_a_new_client_id(server: BayeuxServer) -> None:
    ids = {(await PipelineClient(server).handshake())["clientId"] for _ in range(5)}
    assert len(ids) == 5


async def test_handshake_reconnect_option_adds_max_interval_to_the_advice(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(handshake_reconnect=True))
    reply = await PipelineClient(server).handshake()
    assert reply["advice"]["maxInterval"] == server.options.max_interval


async def test_handshake_without_a_common_connection_type_fails_with_advice_none(
    server: BayeuxServer,
) -> None:
    reply = await PipelineClient(server).handshake(supportedConnectionTypes=["flash", "iframe"])
    assert_refused(reply, "301::connection_type_unsupported", "none")
    assert reply["supportedConnectionTypes"] == list(server.options.allowed_transports)
    assert "clientId" not in reply
    assert server.sessions == {}


async def test_handshake_with_non_string_connection_types_fails_cleanly(
    server: BayeuxServer,
) -> None:
    """JSON objects or arrays in supportedConnectionTypes are not connection types: the
    handshake must fail like any other with no common type, not raise."""
    reply = await PipelineClient(server).handshake(
        supportedConnectionTypes=[{"type": "long-polling"}, ["websocket"]]
    )
    assert_refused(reply, "301::connection_type_unsupported", "none")


async def test_handshake_makes_the_server_ignore_the_rest_of_the_batch(
    server: BayeuxServer,
) -> None:
    client = PipelineClient(server)
    result = await client.send(
        client.message(p.META_HANDSHAKE, version="1.0", supportedConnectionTypes=["long-polling"]),
        client.message("/ignored", data=1),
    )
    assert [r["channel"] for r in result.replies] == ["/meta/handshake"]


async def test_handshake_past_max_sessions_is_refused_with_advice_to_handshake_again(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(max_sessions=2))
    for _ in range(2):
        assert (await PipelineClient(server).handshake())["successful"] is True
    reply = await PipelineClient(server).handshake()
    assert_refused(reply, "503::too_many_sessions", "handshake")
    assert len(server.sessions) == 2


# -- field validation --------------------------------------------------------------------------


async def test_message_without_channel_fails_with_channel_missing(server: BayeuxServer) -> None:
    client = await connected_client(server)
    result = await client.send({"clientId": client.client_id, "id": "9", "data": 1})
    assert result.replies == [
        {
            "channel": None,
            "id": "9",
            "successful": False,
            "error": "400::channel_missing",
            "clientId": client.client_id,
        }
    ]


async def test_message_with_invalid_id_fails_with_message_id_invalid(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    for bad_id in ("has space", True, 1.5, {"a": 1}):
        reply = await client.publish("/t", "x", id=bad_id)
        assert reply["successful"] is False
        assert reply["error"] == "405::message_id_invalid"


async def test_message_with_malformed_channel_fails_with_channel_invalid(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    reply = await client.publish("no/leading/slash", "x")
    assert (reply["successful"], reply["error"]) == (False, "405::channel_invalid")


async def test_message_with_malformed_client_id_fails_with_client_id_invalid(
    server: BayeuxServer,
) -> None:
    client = PipelineClient(server)
    reply = await client.publish("/t", "x", clientId="not a client id")
    assert (reply["successful"], reply["error"]) == (False, "405::client_id_invalid")
    assert "clientId" not in reply


async def test_unknown_meta_channel_fails(server: BayeuxServer) -> None:
    client = await connected_client(server)
    reply = await client.request("/meta/nonsense")
    assert reply["successful"] is False
    assert reply["error"].startswith("400:")


# -- unknown sessions --------------------------------------------------------------------------


async def test_connect_with_unknown_client_id_gets_session_unknown_and_handshake_advice(
    server: BayeuxServer,
) -> None:
    client = PipelineClient(server)
    result = await client.send(
        {"channel": "/meta/connect", "id": "1", "clientId": "deadbeef", "connectionType": "x"}
    )
    assert result.held is None
    assert result.replies == [
        {
            "channel": "/meta/connect",
            "id": "1",
            "successful": False,
            "error": "402::session_unknown",
            "clientId": "deadbeef",
            "advice": {"reconnect": "handshake", "interval": 0},
        }
    ]


async def test_publish_with_unknown_client_id_gets_session_unknown(server: BayeuxServer) -> None:
    client = PipelineClient(server)
    client.client_id = "deadbeef"
    reply = await client.publish("/t", "x")
    assert reply["error"] == "402::session_unknown"
    assert reply["advice"] == {"reconnect": "handshake", "interval": 0}


async def test_subscribe_with_unknown_client_id_gets_session_unknown(
    server: BayeuxServer,
) -> None:
    client = PipelineClient(server)
    client.client_id = "deadbeef"
    reply = await client.subscribe("/t")
    assert (reply["successful"], reply["error"]) == (False, "402::session_unknown")


# -- /meta/connect -----------------------------------------------------------------------------


async def test_first_connect_after_handshake_answers_at_once(server: BayeuxServer) -> None:
    client = PipelineClient(server)
    await client.handshake()
    held = await client.start_connect()
    assert held.done
    deliveries, reply = await client.finish(held)
    assert deliveries == []
    assert reply == {
        "channel": "/meta/connect",
        "id": "2",
        "successful": True,
        "advice": {"reconnect": "retry", "interval": 0, "timeout": TIMEOUT_MS},
    }


async def test_connect_is_held_until_a_message_arrives(server: BayeuxServer) -> None:
    subscriber = await connected_client(server)
    await subscriber.subscribe("/t")
    publisher = await connected_client(server)
    held = await subscriber.start_connect()
    await asyncio.sleep(0.05)
    assert not held.done
    await publisher.publish("/t", {"n": 1})
    assert held.done
    deliveries, reply = await subscriber.finish(held)
    assert deliveries == [{"channel": "/t", "data": {"n": 1}}]
    assert reply["successful"] is True


async def test_connect_is_held_until_the_timeout_when_nothing_arrives(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(timeout=200))
    client = await connected_client(server)
    started = now()
    deliveries, reply = await client.connect()
    elapsed = now() - started
    assert 0.18 <= elapsed < 1.0
    assert deliveries == []
    assert reply["successful"] is True
    assert reply["advice"]["timeout"] == 200


async def test_client_advice_timeout_zero_answers_at_once(server: BayeuxServer) -> None:
    client = await connected_client(server)
    held = await client.start_connect(advice={"timeout": 0})
    assert held.done
    _, reply = await client.finish(held)
    assert reply["successful"] is True


async def test_client_advice_shorter_timeout_is_honoured(server: BayeuxServer) -> None:
    client = await connected_client(server)
    started = now()
    await client.connect(advice={"timeout": 50})
    assert now() - started < 0.3


async def test_connect_with_queued_messages_answers_at_once(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    await client.publish("/t", 1)
    held = await client.start_connect()
    assert held.done
    deliveries, _ = await client.finish(held)
    assert deliveries == [{"channel": "/t", "data": 1}]


async def test_second_connect_supersedes_the_held_one(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    first = await client.start_connect()
    second = await client.start_connect()
    assert first.done and first.superseded
    assert not second.done and not second.superseded
    assert client.server.sessions[client.client_id or ""].held is second
    deliveries, _ = await client.finish(first)
    assert deliveries == []
    await client.publish("/t", "after")
    deliveries, _ = await client.finish(second)
    assert deliveries == [{"channel": "/t", "data": "after"}]


async def test_held_connect_of_a_disconnected_session_is_answered_with_reconnect_none(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    held = await client.start_connect()
    await client.disconnect()
    assert held.done
    deliveries, reply = await client.finish(held)
    assert deliveries == []
    assert reply["successful"] is True
    assert reply["advice"] == {"reconnect": "none", "interval": 0}


async def test_held_connect_of_a_session_removed_by_the_server_gets_session_unknown(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    held = await client.start_connect()
    server.sessions[client.client_id or ""].disconnect()
    deliveries, reply = await client.finish(held)
    assert deliveries == []
    assert_refused(reply, "402::session_unknown", "handshake")


# -- subscribe and unsubscribe -----------------------------------------------------------------


async def test_subscribe_with_a_string_echoes_the_subscription(server: BayeuxServer) -> None:
    client = await connected_client(server)
    reply = await client.subscribe("/chat/1")
    assert reply == {
        "channel": "/meta/subscribe",
        "id": "3",
        "successful": True,
        "subscription": "/chat/1",
    }
    assert server.sessions[client.client_id or ""].subscriptions == {"/chat/1"}


async def test_subscribe_with_an_array_echoes_the_array(server: BayeuxServer) -> None:
    client = await connected_client(server)
    reply = await client.subscribe(["/a", "/b/*"])
    assert reply["successful"] is True
    assert reply["subscription"] == ["/a", "/b/*"]
    assert server.sessions[client.client_id or ""].subscriptions == {"/a", "/b/*"}


async def test_subscribe_without_subscription_fails_with_subscription_missing(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    reply = await client.request(p.META_SUBSCRIBE)
    assert (reply["successful"], reply["error"]) == (False, "403::subscription_missing")


@pytest.mark.parametrize("pattern", ["/a/*/b", "/**/a", "a/b", "/a*"])
async def test_subscribe_to_an_invalid_pattern_fails_and_records_nothing(
    server: BayeuxServer, pattern: str
) -> None:
    client = await connected_client(server)
    reply = await client.subscribe(["/ok", pattern])
    assert (reply["successful"], reply["error"]) == (False, "403::subscription_invalid")
    assert reply["subscription"] == ["/ok", pattern]
    assert server.sessions[client.client_id or ""].subscriptions == set()


@pytest.mark.parametrize("pattern", ["/meta/**", "/meta/connect", "/meta/*"])
async def test_subscribe_to_meta_channels_is_denied(server: BayeuxServer, pattern: str) -> None:
    client = await connected_client(server)
    reply = await client.subscribe(pattern)
    assert reply["successful"] is False
    assert SUBSCRIBE_DENIED.match(reply["error"]), reply["error"]
    assert reply["subscription"] == pattern
    assert server.index.patterns() == []


async def test_subscribe_to_a_service_channel_succeeds_but_is_not_recorded(
    server: BayeuxServer,
) -> None:
    subscriber = await connected_client(server)
    reply = await subscriber.subscribe(["/service/chat", "/service/**"])
    assert reply["successful"] is True
    assert server.sessions[subscriber.client_id or ""].subscriptions == set()
    assert server.index.patterns() == []
    other = await connected_client(server)
    assert (await other.publish("/service/chat", "hello"))["successful"] is True
    assert await subscriber.poll() == []


async def test_unsubscribe_stops_delivery(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    reply = await client.unsubscribe("/t")
    assert reply == {
        "channel": "/meta/unsubscribe",
        "id": "4",
        "successful": True,
        "subscription": "/t",
    }
    await client.publish("/t", 1)
    assert await client.poll() == []
    assert server.index.patterns() == []


async def test_max_subscriptions_limits_new_subscriptions_only(make_server: ServerFactory) -> None:
    server = await make_server(fast_options(max_subscriptions=2))
    client = await connected_client(server)
    assert (await client.subscribe(["/a", "/b"]))["successful"] is True
    reply = await client.subscribe("/c")
    assert reply["successful"] is False
    assert reply["error"] == "403::too_many_subscriptions"
    assert (await client.subscribe("/a"))["successful"] is True
    assert server.sessions[client.client_id or ""].subscriptions == {"/a", "/b"}


# -- publish and delivery ----------------------------------------------------------------------


async def test_publish_reaches_every_subscriber_and_is_acknowledged(server: BayeuxServer) -> None:
    subscribers = [await connected_client(server) for _ in range(3)]
    for subscriber in subscribers:
        await subscriber.subscribe("/t")
    publisher = await connected_client(server)
    reply = await publisher.publish("/t", {"n": 1}, ext={"k": "v"})
    assert reply == {"channel": "/t", "id": "3", "successful": True}
    for subscriber in subscribers:
        assert await subscriber.poll() == [{"channel": "/t", "data": {"n": 1}, "ext": {"k": "v"}}]
    assert await publisher.poll() == []


@pytest.mark.parametrize("channel", ["/a/*", "/a/**"])
async def test_publish_to_a_wildcard_channel_fails_with_channel_invalid(
    server: BayeuxServer, channel: str
) -> None:
    client = await connected_client(server)
    await client.subscribe("/a/**")
    reply = await client.publish(channel, "x")
    assert (reply["successful"], reply["error"]) == (False, "405::channel_invalid")
    assert await client.poll() == []


async def test_publish_to_a_wildcard_is_refused_even_without_field_validation(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(validate_message_fields=False))
    client = await connected_client(server)
    await client.subscribe("/a/**")
    reply = await client.publish("/a/**", "x")
    assert (reply["successful"], reply["error"]) == (False, "405::channel_invalid")
    assert await client.poll() == []


async def test_publish_without_data_fails_with_data_missing(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    reply = await client.request("/t")
    assert (reply["successful"], reply["error"]) == (False, "400::data_missing")
    assert await client.poll() == []


async def test_publish_with_null_data_is_delivered(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    assert (await client.publish("/t", None))["successful"] is True
    assert await client.poll() == [{"channel": "/t", "data": None}]


async def test_publisher_receives_its_own_broadcast_by_default(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    await client.publish("/t", 1)
    assert await client.poll() == [{"channel": "/t", "data": 1}]


async def test_broadcast_to_publisher_false_excludes_the_publisher(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(broadcast_to_publisher=False))
    publisher = await connected_client(server)
    other = await connected_client(server)
    for client in (publisher, other):
        await client.subscribe("/t")
    await publisher.publish("/t", 1)
    assert await publisher.poll() == []
    assert await other.poll() == [{"channel": "/t", "data": 1}]


async def test_overlapping_wildcard_subscriptions_deliver_exactly_once(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    await client.subscribe(["/a/b", "/a/*", "/a/**", "/**"])
    await client.publish("/a/b", "once")
    await client.publish("/a/b/c", "deep")
    await client.publish("/x", "top")
    assert await client.poll() == [
        {"channel": "/a/b", "data": "once"},
        {"channel": "/a/b/c", "data": "deep"},
        {"channel": "/x", "data": "top"},
    ]


async def test_messages_are_delivered_in_publish_order(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    for n in range(20):
        await client.publish("/t", n)
    assert [m["data"] for m in await client.poll()] == list(range(20))


async def test_batch_of_publish_and_connect_delivers_in_the_connect_reply(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    result = await client.send(
        client.message("/t", data="piggyback"),
        client.message(p.META_CONNECT, connectionType="long-polling"),
    )
    assert [r["channel"] for r in result.replies] == ["/t"]
    assert result.held is not None and result.held.done
    deliveries, reply = await client.finish(result.held)
    assert deliveries == [{"channel": "/t", "data": "piggyback"}]
    assert reply["successful"] is True


async def test_server_side_publish_reaches_subscribers(server: BayeuxServer) -> None:
    client = await connected_client(server)
    await client.subscribe("/news/*")
    await server.publish("/news/today", {"headline": "x"})
    assert await client.poll() == [{"channel": "/news/today", "data": {"headline": "x"}}]


@pytest.mark.parametrize("channel", ["/meta/connect", "/service/echo", "/a/*", "bad"])
async def test_server_side_publish_refuses_non_broadcast_channels(
    server: BayeuxServer, channel: str
) -> None:
    with pytest.raises(ValueError):
        await server.publish(channel, 1)


# -- services ----------------------------------------------------------------------------------


async def test_service_handler_reply_goes_to_the_sender_only(server: BayeuxServer) -> None:
    sender = await connected_client(server)
    bystander = await connected_client(server)
    await bystander.subscribe(["/**", "/service/echo"])
    reply = await sender.publish("/service/echo", {"ping": 1})
    assert reply == {"channel": "/service/echo", "id": "3", "successful": True}
    assert await sender.poll() == [{"channel": "/service/echo", "data": {"ping": 1}}]
    assert await bystander.poll() == []


async def test_remote_call_result_is_the_data_of_the_publish_reply(server: BayeuxServer) -> None:
    client = await connected_client(server)
    reply = await client.publish("/service/rpc/echo", {"question": 42})
    assert reply == {
        "channel": "/service/rpc/echo",
        "id": "3",
        "successful": True,
        "data": {"question": 42},
    }
    assert await client.poll() == []


async def test_publish_to_a_service_nobody_handles_succeeds_and_goes_nowhere(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    await client.subscribe("/**")
    reply = await client.publish("/service/nobody", 1)
    assert reply["successful"] is True
    assert await client.poll() == []


async def test_wildcard_service_handler_serves_matching_channels(server: BayeuxServer) -> None:
    seen: list[str] = []

    async def handler(request: ServiceRequest) -> Any:
        seen.append(request.channel)
        return {"via": request.channel}

    server.add_service("/service/app/*", handler)
    client = await connected_client(server)
    reply = await client.publish("/service/app/x", 1)
    assert reply["data"] == {"via": "/service/app/x"}
    assert seen == ["/service/app/x"]


async def test_failing_service_handler_answers_service_failed(server: BayeuxServer) -> None:
    async def broken(request: ServiceRequest) -> None:
        raise RuntimeError("boom")

    server.add_service("/service/broken", broken)
    client = await connected_client(server)
    reply = await client.publish("/service/broken", 1)
    assert (reply["successful"], reply["error"]) == (False, "500::service_failed")


@pytest.mark.parametrize("channel", ["/chat", "/service/*/x", "/meta/x"])
def test_add_service_refuses_non_service_channels(server: BayeuxServer, channel: str) -> None:
    async def handler(request: ServiceRequest) -> None:
        return None

    with pytest.raises(ValueError):
        server.add_service(channel, handler)


# -- disconnect and expiry ---------------------------------------------------------------------


async def test_disconnect_removes_the_session_and_later_messages_get_session_unknown(
    server: BayeuxServer,
) -> None:
    client = await connected_client(server)
    await client.subscribe("/t")
    reply = await client.disconnect()
    assert reply == {"channel": "/meta/disconnect", "id": "4", "successful": True}
    assert client.client_id not in server.sessions
    assert server.index.patterns() == []
    for channel in ("/t", p.META_SUBSCRIBE):
        later = await client.request(channel, data=1, subscription="/t")
        assert (later["successful"], later["error"]) == (False, "402::session_unknown")
    _, connect = await client.connect()
    assert connect["error"] == "402::session_unknown"
    assert connect["advice"] == {"reconnect": "handshake", "interval": 0}


async def test_sweep_removes_sessions_idle_for_longer_than_max_interval(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(max_interval=100))
    removed: list[tuple[str, str]] = []
    server.on_session_removed(lambda session, reason: removed.append((session.id, reason)))
    client = await connected_client(server)
    assert server.sweep() == 0
    await asyncio.sleep(0.15)
    assert server.sweep() == 1
    assert client.client_id not in server.sessions
    assert removed == [(client.client_id, "expired")]
    _, reply = await client.connect()
    assert reply["error"] == "402::session_unknown"


async def test_sweep_keeps_sessions_with_a_held_connect(make_server: ServerFactory) -> None:
    server = await make_server(fast_options(max_interval=50, timeout=2_000))
    client = await connected_client(server)
    held = await client.start_connect()
    await asyncio.sleep(0.1)
    assert server.sweep() == 0
    assert client.client_id in server.sessions
    held.complete()


async def test_sweep_keeps_sessions_that_keep_sending(make_server: ServerFactory) -> None:
    server = await make_server(fast_options(max_interval=200))
    client = await connected_client(server)
    started = now()
    for _ in range(8):
        await asyncio.sleep(0.05)
        await client.poll()
        assert server.sweep() == 0
    assert now() - started > 0.2, "the session must outlive max_interval for this to count"
    assert client.client_id in server.sessions


async def test_background_sweeper_expires_idle_sessions(make_server: ServerFactory) -> None:
    server = await make_server(fast_options(max_interval=50, sweep_period=20))
    client = await connected_client(server)
    async with asyncio.timeout(2):
        while client.client_id in server.sessions:
            await asyncio.sleep(0.02)


# -- slow consumers ----------------------------------------------------------------------------


async def test_queue_over_max_queue_disconnects_the_slow_consumer(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(max_queue=3))
    removed: list[str] = []
    server.on_session_removed(lambda session, reason: removed.append(reason))
    slow = await connected_client(server)
    await slow.subscribe("/t")
    publisher = await connected_client(server)
    for n in range(3):
        await publisher.publish("/t", n)
    assert slow.client_id in server.sessions
    await publisher.publish("/t", 3)
    await wait_until(lambda: slow.client_id not in server.sessions)
    assert removed == ["slow_consumer"]
    _, reply = await slow.connect()
    assert reply["error"] == "402::session_unknown"


async def test_removing_a_slow_consumer_does_not_disturb_the_publish_or_other_subscribers(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(max_queue=3))
    slow, fast = await connected_client(server), await connected_client(server)
    for client in (slow, fast):
        await client.subscribe("/t")
    publisher = await connected_client(server)
    received: list[Any] = []
    for n in range(6):
        reply = await publisher.publish("/t", n)
        assert reply["successful"] is True
        received.extend(m["data"] for m in await fast.poll())
    await wait_until(lambda: slow.client_id not in server.sessions)
    assert received == list(range(6))


async def test_queue_over_max_queue_drops_the_oldest_with_drop_oldest_policy(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(max_queue=3, slow_consumer_policy="drop-oldest"))
    slow = await connected_client(server)
    await slow.subscribe("/t")
    publisher = await connected_client(server)
    for n in range(5):
        await publisher.publish("/t", n)
    assert [m["data"] for m in await slow.poll()] == [2, 3, 4]
    assert server.sessions[slow.client_id or ""].dropped == 2


# -- users, listeners, extensions --------------------------------------------------------------


async def test_deliver_to_user_reaches_all_that_users_sessions_only(server: BayeuxServer) -> None:
    alice_phone, alice_laptop, bob = [await connected_client(server) for _ in range(3)]
    for client, user in ((alice_phone, "alice"), (alice_laptop, "alice"), (bob, "bob")):
        await server.bind_user(server.sessions[client.client_id or ""], user)
    assert {s.id for s in server.user_sessions("alice")} == {
        alice_phone.client_id,
        alice_laptop.client_id,
    }
    await server.deliver_to_user("alice", "/user/notice", {"text": "hi"})
    for client in (alice_phone, alice_laptop):
        assert await client.poll() == [{"channel": "/user/notice", "data": {"text": "hi"}}]
    assert await bob.poll() == []


async def test_a_removed_session_no_longer_belongs_to_its_user(server: BayeuxServer) -> None:
    first, second = [await connected_client(server) for _ in range(2)]
    for client in (first, second):
        await server.bind_user(server.sessions[client.client_id or ""], "alice")
    await first.disconnect()
    assert {s.id for s in server.user_sessions("alice")} == {second.client_id}
    await second.disconnect()
    assert server.user_sessions("alice") == set()


async def test_rebinding_a_session_moves_it_to_the_new_user(server: BayeuxServer) -> None:
    client = await connected_client(server)
    session = server.sessions[client.client_id or ""]
    await server.bind_user(session, "alice")
    await server.bind_user(session, "bob")
    assert server.user_sessions("alice") == set()
    assert server.user_sessions("bob") == {session}


async def test_session_listeners_hear_additions_and_removals_with_reasons(
    server: BayeuxServer,
) -> None:
    events: list[tuple[str, str | None, str]] = []
    server.on_session_added(lambda s, reason: events.append(("added", s.id, reason)))
    server.on_session_removed(lambda s, reason: events.append(("removed", s.id, reason)))
    first = await connected_client(server)
    second = await connected_client(server)
    await first.disconnect()
    server.sessions[second.client_id or ""].disconnect()
    assert events == [
        ("added", first.client_id, "handshake"),
        ("added", second.client_id, "handshake"),
        ("removed", first.client_id, "disconnect"),
        ("removed", second.client_id, "server"),
    ]


async def test_a_failing_session_listener_does_not_break_the_handshake(
    server: BayeuxServer,
) -> None:
    def broken(session: ServerSession, reason: str) -> None:
        raise RuntimeError("listener bug")

    server.on_session_added(broken)
    reply = await PipelineClient(server).handshake()
    assert reply["successful"] is True


class _VetoChannel(Extension):
    """Deletes incoming messages on one channel."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        return message.get("channel") != self.channel


class _VetoReplies(Extension):
    """Deletes outgoing replies on one channel."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def outgoing(self, session: ServerSession | None, reply: Message) -> bool:
        return reply.get("channel") != self.channel


async def test_extension_deleting_an_incoming_message_answers_message_deleted(
    server: BayeuxServer,
) -> None:
    server.add_extension(_VetoChannel("/blocked"))
    client = await connected_client(server)
    await client.subscribe(["/blocked", "/open"])
    reply = await client.publish("/blocked", 1)
    assert reply["successful"] is False
    assert reply["error"] == "404::message_deleted"
    await client.publish("/open", 2)
    assert await client.poll() == [{"channel": "/open", "data": 2}]


async def test_extension_deleting_a_handshake_answers_message_deleted(
    server: BayeuxServer,
) -> None:
    server.add_extension(_VetoChannel(p.META_HANDSHAKE))
    reply = await PipelineClient(server).handshake()
    assert (reply["successful"], reply["error"]) == (False, "404::message_deleted")
    assert server.sessions == {}


async def test_extension_deleting_an_outgoing_reply_answers_message_deleted(
    server: BayeuxServer,
) -> None:
    server.add_extension(_VetoReplies(p.META_SUBSCRIBE))
    client = await connected_client(server)
    reply = await client.subscribe("/t")
    assert (reply["successful"], reply["error"]) == (False, "404::message_deleted")


async def test_send_extension_can_replace_or_drop_deliveries(server: BayeuxServer) -> None:
    from bayeux import Delivery

    class Redact(Extension):
        def send(self, session: ServerSession, delivery: Delivery) -> Delivery | None:
            data = delivery.message.get("data")
            if data == "drop":
                return None
            return Delivery({**delivery.message, "data": "redacted"})

    server.add_extension(Redact())
    client = await connected_client(server)
    await client.subscribe("/t")
    await client.publish("/t", "drop")
    await client.publish("/t", "secret")
    assert await client.poll() == [{"channel": "/t", "data": "redacted"}]
