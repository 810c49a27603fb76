"""The extensions the standalone server ships: ack (reliable delivery) and timesync."""

from __future__ import annotations

import time
from typing import Any

from bayeux import BayeuxServer
from bayeux import protocol as p
from tests.conftest import (
    LiveServer,
    PipelineClient,
    ServerFactory,
    connected_client,
    fast_options,
    held_connect,
    wait_until,
)

# -- ack ---------------------------------------------------------------------------------------


async def ack_client(server: BayeuxServer) -> tuple[PipelineClient, int]:
    """A client that negotiated ack and did its first connect; returns the batch it got."""
    client = PipelineClient(server)
    reply = await client.handshake(ext={"ack": True})
    assert reply["successful"] is True
    _, connect = await client.connect(ext={"ack": -1})
    batch = connect["ext"]["ack"]
    assert isinstance(batch, int)
    return client, batch


async def ack_connect(
    client: PipelineClient, acked: int, **fields: Any
) -> tuple[list[Any], int]:
    """A connect that acknowledges batch `acked`; returns the data delivered and the new batch."""
    deliveries, reply = await client.connect(ext={"ack": acked}, **fields)
    assert reply["successful"] is True, reply
    return [m["data"] for m in deliveries], reply["ext"]["ack"]


async def test_handshake_asking_for_ack_is_answered_with_ack_true(server: BayeuxServer) -> None:
    reply = await PipelineClient(server).handshake(ext={"ack": True})
    assert reply["ext"]["ack"] is True


async def assert_no_ext_added(server: BayeuxServer, name: str) -> None:
    """A client that sends no ext gets no `ext[name]` at handshake nor in its first connect."""
    client = PipelineClient(server)
    reply = await client.handshake()
    assert name not in reply.get("ext", {})
    _, connect = await client.connect()
    assert name not in connect.get("ext", {})


async def test_handshake_without_ack_gets_no_ack_ext(server: BayeuxServer) -> None:
    await assert_no_ext_added(server, "ack")


async def test_each_connect_reply_carries_a_new_batch_number(server: BayeuxServer) -> None:
    client, first = await ack_client(server)
    _, second = await ack_connect(client, first, advice={"timeout": 0})
    _, third = await ack_connect(client, second, advice={"timeout": 0})
    assert first < second < third


async def test_ack_messages_arrive_only_in_connect_replies_with_their_batch(
    server: BayeuxServer,
) -> None:
    client, batch = await ack_client(server)
    await client.subscribe("/t")
    held = await client.start_connect(ext={"ack": batch})
    assert not held.done
    publisher = await connected_client(server)
    await publisher.publish("/t", "m1")
    assert held.done
    deliveries, reply = await client.finish(held)
    assert [m["data"] for m in deliveries] == ["m1"]
    assert reply["ext"]["ack"] > batch


async def test_connect_acking_an_older_batch_gets_the_unacked_messages_again(
    server: BayeuxServer,
) -> None:
    client, first = await ack_client(server)
    await client.subscribe("/t")
    await client.publish("/t", "m1")
    data, second = await ack_connect(client, first)
    assert data == ["m1"]
    # The reply carrying batch `second` was lost: the client still acks only `first`.
    await client.publish("/t", "m2")
    data, third = await ack_connect(client, first)
    assert data == ["m1", "m2"]
    assert third > second


async def test_acking_a_batch_clears_its_messages(server: BayeuxServer) -> None:
    client, first = await ack_client(server)
    await client.subscribe("/t")
    await client.publish("/t", "m1")
    _, second = await ack_connect(client, first)
    session = server.sessions[client.client_id or ""]
    assert session.pending == 1
    data, _ = await ack_connect(client, second, advice={"timeout": 0})
    assert data == []
    assert session.pending == 0


async def test_connect_with_unacked_messages_answers_at_once(server: BayeuxServer) -> None:
    client, first = await ack_client(server)
    await client.subscribe("/t")
    await client.publish("/t", "m1")
    await ack_connect(client, first)
    held = await client.start_connect(ext={"ack": first})
    assert held.done


async def test_malformed_ack_values_acknowledge_nothing(server: BayeuxServer) -> None:
    client, first = await ack_client(server)
    await client.subscribe("/t")
    await client.publish("/t", "m1")
    _, second = await ack_connect(client, first)
    for bogus in ("2", True, None, [second], {"batch": second}, 1.5e9):
        deliveries, reply = await client.connect(ext={"ack": bogus})
        assert [m["data"] for m in deliveries] == ["m1"], bogus
        assert reply["successful"] is True


async def test_ack_over_websocket_delivers_only_in_connect_replies(live: LiveServer) -> None:
    browser = live.browser()
    socket = await browser.websocket()
    handshake = await browser.ws_handshake(socket, ext={"ack": True})
    assert handshake["ext"]["ack"] is True
    first = await socket.reply_to(await browser.ws_connect(socket, ext={"ack": -1}))
    await browser.ws_request(socket, p.META_SUBSCRIBE, subscription="/acked")
    await browser.ws_connect(socket, ext={"ack": first["ext"]["ack"]})
    await wait_until(held_connect(live.bayeux, browser.client_id))
    publisher = await live.browser().connected()
    await publisher.request("/acked", data="reliable")
    assert await socket.deliveries("/acked", 1) == ["reliable"]
    [frame] = [f for f in socket.frames if any(m.get("channel") == "/acked" for m in f)]
    assert [m["channel"] for m in frame] == ["/acked", p.META_CONNECT]
    assert frame[-1]["ext"]["ack"] > first["ext"]["ack"]


# -- timesync ----------------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_handshake_reply_carries_timesync(server: BayeuxServer) -> None:
    tc = now_ms() - 1_000
    before = now_ms()
    reply = await PipelineClient(server).handshake(ext={"timesync": {"tc": tc, "l": 7, "o": -3}})
    after = now_ms()
    sync = reply["ext"]["timesync"]
    assert set(sync) == {"tc", "ts", "p", "a"}
    assert sync["tc"] == tc
    assert before <= sync["ts"] <= after
    assert 0 <= sync["p"] <= after - before
    assert sync["a"] == tc + 7 - 3 - sync["ts"]


async def test_connect_reply_carries_timesync_with_the_time_it_was_held(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(timeout=200))
    client = await connected_client(server)
    _, reply = await client.connect(ext={"timesync": {"tc": now_ms(), "l": 0, "o": 0}})
    sync = reply["ext"]["timesync"]
    assert 180 <= sync["p"] < 1_000


async def test_no_timesync_is_added_when_the_client_sends_none(server: BayeuxServer) -> None:
    await assert_no_ext_added(server, "timesync")


async def test_timesync_with_non_numeric_fields_still_answers(server: BayeuxServer) -> None:
    reply = await PipelineClient(server).handshake(ext={"timesync": {"tc": "x", "l": None}})
    assert reply["successful"] is True
    assert reply["ext"]["timesync"]["tc"] == 0
