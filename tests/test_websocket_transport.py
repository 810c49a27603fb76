"""The websocket transport over a real aiohttp server on a loopback port."""

from __future__ import annotations

import asyncio

from bayeux import protocol as p
from tests.conftest import (
    BayeuxSocket,
    Browser,
    LiveFactory,
    LiveServer,
    fast_options,
    held_connect,
    wait_until,
)


async def held_subscriber(live: LiveServer, browser: Browser, subscription: str) -> BayeuxSocket:
    """A websocket whose session subscribed to `subscription` and has its /meta/connect held."""
    socket = await browser.ws_connected()
    await browser.ws_request(socket, p.META_SUBSCRIBE, subscription=subscription)
    await browser.ws_connect(socket)
    await wait_until(held_connect(live.bayeux, browser.client_id))
    return socket


async def test_handshake_connect_subscribe_and_publish_over_one_socket(live: LiveServer) -> None:
    browser = live.browser()
    socket = await browser.websocket()
    handshake = await browser.ws_handshake(socket)
    assert handshake["successful"] is True
    assert handshake["supportedConnectionTypes"] == list(p.ALL_TRANSPORTS)
    session = live.bayeux.sessions[handshake["clientId"]]
    connect = await socket.reply_to(await browser.ws_connect(socket))
    assert connect["successful"] is True
    assert session.transport == p.WEBSOCKET
    subscribe = await browser.ws_request(socket, p.META_SUBSCRIBE, subscription="/chat")
    assert subscribe["successful"] is True
    publish = await browser.ws_request(socket, "/chat", data={"text": "hi"})
    assert publish == {"channel": "/chat", "id": publish["id"], "successful": True}
    assert await socket.deliveries("/chat", 1) == [{"text": "hi"}]


async def test_websocket_upgrade_sets_the_browser_cookie(live: LiveServer) -> None:
    browser = live.browser()
    socket = await browser.websocket()
    cookie = browser.cookie()
    assert cookie is not None and p.is_valid_client_id(cookie)
    handshake = await browser.ws_handshake(socket)
    assert live.bayeux.sessions[handshake["clientId"]].browser_id == cookie


async def test_deliveries_are_pushed_without_waiting_for_a_connect(live: LiveServer) -> None:
    browser = live.browser()
    socket = await browser.ws_connected()
    await browser.ws_request(socket, p.META_SUBSCRIBE, subscription="/push")
    publisher = await live.browser().connected()
    await publisher.request("/push", data="now")
    frame = await socket.receive_frame()
    assert frame == [{"channel": "/push", "data": "now"}]


async def test_deliveries_are_pushed_while_the_connect_stays_held(live: LiveServer) -> None:
    browser = live.browser()
    socket = await held_subscriber(live, browser, "/push")
    publisher = await live.browser().connected()
    await publisher.request("/push", data="now")
    frame = await socket.receive_frame()
    assert frame == [{"channel": "/push", "data": "now"}]
    assert live.bayeux.sessions[browser.client_id or ""].held is not None


async def test_held_connect_is_answered_on_its_timeout_as_a_heartbeat(
    start_live: LiveFactory,
) -> None:
    live = await start_live(fast_options(timeout=100))
    browser = live.browser()
    socket = await browser.ws_connected()
    started = asyncio.get_running_loop().time()
    reply = await socket.reply_to(await browser.ws_connect(socket))
    assert reply["successful"] is True
    assert asyncio.get_running_loop().time() - started >= 0.09


async def test_messages_published_in_one_frame_arrive_in_order(live: LiveServer) -> None:
    subscriber_browser = live.browser()
    subscriber = await subscriber_browser.ws_connected()
    await subscriber_browser.ws_request(subscriber, p.META_SUBSCRIBE, subscription="/seq")
    publisher_browser = live.browser()
    publisher = await publisher_browser.ws_connected()
    batch = [publisher_browser.message("/seq", data=n) for n in range(10)]
    await publisher.send(*batch)
    assert await subscriber.deliveries("/seq", 10) == list(range(10))
    replies = await publisher.wait_for(
        lambda got: sum(1 for m in got if m.get("channel") == "/seq") >= 10
    )
    assert [m["id"] for m in replies if m.get("channel") == "/seq"] == [m["id"] for m in batch]
    assert len(subscriber.frames) <= 10


async def test_invalid_json_closes_the_socket_with_1007(live: LiveServer) -> None:
    socket = await live.browser().websocket()
    await socket.ws.send_str("[{not json")
    assert await socket.close_code() == 1007


async def test_json_that_is_not_a_batch_closes_the_socket_with_1007(live: LiveServer) -> None:
    socket = await live.browser().websocket()
    await socket.ws.send_str("[1, 2, 3]")
    assert await socket.close_code() == 1007


async def test_frame_over_max_message_size_closes_the_socket_with_1009(
    start_live: LiveFactory,
) -> None:
    live = await start_live(fast_options(max_message_size=1024))
    socket = await live.browser().websocket()
    await socket.ws.send_str('[{"channel":"/meta/handshake","pad":"' + "x" * 2000 + '"}]')
    assert await socket.close_code() == 1009
    assert live.bayeux.sessions == {}


async def test_session_survives_its_socket_and_resumes_on_a_new_one(live: LiveServer) -> None:
    browser = live.browser()
    first = await held_subscriber(live, browser, "/away")
    await first.ws.close()
    session = live.bayeux.sessions[browser.client_id or ""]
    await wait_until(lambda: session.link is None)
    publisher = await live.browser().connected()
    await publisher.request("/away", data="while you were out")
    assert browser.client_id in live.bayeux.sessions

    second = await browser.websocket()
    reply = await second.reply_to(await browser.ws_connect(second))
    assert reply["successful"] is True
    assert await second.deliveries("/away", 1) == ["while you were out"]
    await publisher.request("/away", data="pushed again")
    assert await second.deliveries("/away", 2) == ["while you were out", "pushed again"]


async def test_session_whose_socket_closed_expires_after_max_interval(live: LiveServer) -> None:
    browser = live.browser()
    first = await browser.ws_connected()
    await first.ws.close()
    session = live.bayeux.sessions[browser.client_id or ""]
    await wait_until(lambda: session.link is None)
    await asyncio.sleep(live.bayeux.options.max_interval / 1000 + 0.05)
    assert live.bayeux.sweep() == 1
    second = await browser.websocket()
    reply = await second.reply_to(await browser.ws_connect(second))
    assert reply["error"] == "402::session_unknown"
    assert reply["advice"] == {"reconnect": "handshake", "interval": 0}


async def test_handshake_with_bad_connection_type_element_gets_a_reply_not_a_dropped_socket(
    live: LiveServer,
) -> None:
    browser = live.browser()
    socket = await browser.websocket()
    reply = await browser.ws_handshake(socket, supportedConnectionTypes=[["websocket"]])
    assert reply["successful"] is False
    assert reply["error"] == "301::connection_type_unsupported"
