"""long-polling and callback-polling (JSONP) over a real aiohttp server on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import quote

import orjson
import pytest
from multidict import CIMultiDictProxy

from bayeux import protocol as p
from tests.conftest import (
    LiveFactory,
    LiveServer,
    assert_refused,
    bayeux_json,
    fast_options,
    held_connect,
    wait_until,
)

FORM = "application/x-www-form-urlencoded"


def set_cookie_attributes(headers: CIMultiDictProxy[str]) -> tuple[str, set[str]]:
    """The BAYEUX_BROWSER Set-Cookie header: its value and its attributes."""
    [header] = [h for h in headers.getall("Set-Cookie", []) if h.startswith("BAYEUX_BROWSER=")]
    first, *attributes = [part.strip() for part in header.split(";")]
    return first.partition("=")[2], set(attributes)


def handshake_message(**fields: object) -> p.Message:
    return {
        "channel": p.META_HANDSHAKE,
        "id": "1",
        "version": "1.0",
        "supportedConnectionTypes": ["long-polling", "callback-polling"],
        **fields,
    }


def handshake_parameter() -> str:
    """A handshake as the `message` query parameter of a JSONP request."""
    return orjson.dumps([handshake_message()]).decode()


# -- URLs and the basic exchange ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/handshake"])
async def test_handshake_is_served_at_the_endpoint_and_its_type_suffix(
    live: LiveServer, suffix: str
) -> None:
    reply = await live.browser().post(handshake_message(), suffix=suffix)
    assert reply.status == 200
    [handshake] = reply.json()
    assert handshake["successful"] is True
    assert handshake["clientId"] in live.bayeux.sessions


async def test_a_whole_session_over_the_cometd_js_url_suffixes(live: LiveServer) -> None:
    browser = live.browser()
    assert (await browser.handshake())["successful"] is True
    [connect] = await browser.request(p.META_CONNECT, "/connect", connectionType="long-polling")
    assert connect["successful"] is True
    [subscribe] = await browser.request(p.META_SUBSCRIBE, "/", subscription="/t")
    assert subscribe["successful"] is True
    [publish] = await browser.request("/t", "/", data={"n": 1})
    assert publish["successful"] is True
    batch = await browser.request(p.META_CONNECT, "/connect", connectionType="long-polling")
    assert batch[0] == {"channel": "/t", "data": {"n": 1}}
    assert batch[-1]["channel"] == p.META_CONNECT and batch[-1]["successful"] is True
    [disconnect] = await browser.request(p.META_DISCONNECT, "/disconnect")
    assert disconnect["successful"] is True
    assert browser.client_id not in live.bayeux.sessions


async def test_replies_are_uncacheable_json(live: LiveServer) -> None:
    reply = await live.browser().post(handshake_message())
    assert reply.headers["Content-Type"].startswith("application/json")
    assert "no-cache" in reply.headers["Cache-Control"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_held_long_poll_is_answered_by_a_publish_from_another_browser(
    live: LiveServer,
) -> None:
    subscriber = await live.browser().connected()
    await subscriber.request(p.META_SUBSCRIBE, subscription="/room")
    publisher = await live.browser().connected()
    poll = asyncio.create_task(subscriber.connect())
    await wait_until(held_connect(live.bayeux, subscriber.client_id))
    await publisher.request("/room", data="hello")
    batch = await asyncio.wait_for(poll, 1.0)
    assert batch[0] == {"channel": "/room", "data": "hello"}
    assert batch[-1]["channel"] == p.META_CONNECT


async def test_connect_request_without_a_type_suffix_is_held_too(live: LiveServer) -> None:
    browser = await live.browser().connected()
    poll = asyncio.create_task(browser.request(p.META_CONNECT, connectionType="long-polling"))
    await wait_until(held_connect(live.bayeux, browser.client_id))
    live.bayeux.sessions[browser.client_id or ""].deliver("/private", 1)
    batch = await asyncio.wait_for(poll, 1.0)
    assert batch[0] == {"channel": "/private", "data": 1}


# -- the BAYEUX_BROWSER cookie -----------------------------------------------------------------


async def test_handshake_sets_an_http_only_browser_cookie(live: LiveServer) -> None:
    browser = live.browser()
    reply = await browser.post(handshake_message(), suffix="/handshake")
    value, attributes = set_cookie_attributes(reply.headers)
    assert p.is_valid_client_id(value) and len(value) == 32
    assert attributes == {"Path=/", "HttpOnly"}
    [handshake] = reply.json()
    assert value != handshake["clientId"]
    assert live.bayeux.sessions[handshake["clientId"]].browser_id == value


async def test_second_handshake_from_the_same_browser_keeps_its_cookie(live: LiveServer) -> None:
    browser = live.browser()
    await browser.handshake()
    cookie = browser.cookie()
    reply = await browser.post(handshake_message())
    assert "Set-Cookie" not in reply.headers
    [handshake] = reply.json()
    assert live.bayeux.sessions[handshake["clientId"]].browser_id == cookie


async def test_request_without_the_browser_cookie_gets_session_unknown(live: LiveServer) -> None:
    browser = await live.browser().connected()
    message = browser.message(p.META_CONNECT, connectionType="long-polling", advice={"timeout": 0})
    reply = await browser.post(message, suffix="/connect", cookies=False)
    assert reply.status == 200
    [connect] = reply.json()
    assert_refused(connect, "402::session_unknown", "handshake")


async def test_trust_client_session_accepts_a_request_without_the_cookie(
    start_live: LiveFactory,
) -> None:
    live = await start_live(fast_options(trust_client_session=True))
    browser = await live.browser().connected()
    message = browser.message(p.META_CONNECT, connectionType="long-polling", advice={"timeout": 0})
    reply = await browser.post(message, suffix="/connect", cookies=False)
    [connect] = reply.json()
    assert connect["successful"] is True


async def test_cookie_attributes_follow_the_options(start_live: LiveFactory) -> None:
    live = await start_live(
        fast_options(
            browser_cookie_name="BB",
            browser_cookie_path="/cometd",
            browser_cookie_domain="example.test",
            browser_cookie_max_age=3600,
            browser_cookie_secure=True,
            browser_cookie_same_site="None",
            browser_cookie_partitioned=True,
        )
    )
    reply = await live.browser().post(handshake_message())
    [header] = reply.headers.getall("Set-Cookie")
    name, _, rest = header.partition("=")
    attributes = {part.strip() for part in rest.split(";")[1:]}
    assert name == "BB"
    assert attributes == {
        "Path=/cometd",
        "Domain=example.test",
        "Max-Age=3600",
        "HttpOnly",
        "Secure",
        "SameSite=None",
        "Partitioned",
    }


async def test_cookie_can_be_readable_by_scripts_when_configured(start_live: LiveFactory) -> None:
    live = await start_live(fast_options(browser_cookie_http_only=False))
    reply = await live.browser().post(handshake_message())
    _, attributes = set_cookie_attributes(reply.headers)
    assert "HttpOnly" not in attributes


# -- several clients in one browser ------------------------------------------------------------


async def test_second_session_polling_from_the_same_browser_gets_multiple_clients_advice(
    live: LiveServer,
) -> None:
    first = await live.browser().connected()
    second = await first.tab().connected()
    assert first.cookie() == second.cookie()
    held = asyncio.create_task(first.connect())
    await wait_until(held_connect(live.bayeux, first.client_id))
    [reply] = await second.connect()
    assert reply["successful"] is True
    assert reply["advice"] == {
        "reconnect": "retry",
        "interval": live.bayeux.options.multi_session_interval,
        "multiple-clients": True,
    }
    live.bayeux.sessions[first.client_id or ""].deliver("/wake", 1)
    batch = await asyncio.wait_for(held, 1.0)
    assert "multiple-clients" not in batch[-1]["advice"]


async def test_multiple_clients_advice_ends_when_the_other_poll_ends(live: LiveServer) -> None:
    first = await live.browser().connected()
    second = await first.tab().connected()
    held = asyncio.create_task(first.connect())
    await wait_until(held_connect(live.bayeux, first.client_id))
    [degraded] = await second.connect()
    assert degraded["advice"].get("multiple-clients") is True
    live.bayeux.sessions[first.client_id or ""].deliver("/wake", 1)
    await asyncio.wait_for(held, 1.0)
    poll = asyncio.create_task(second.connect())
    await wait_until(held_connect(live.bayeux, second.client_id))
    live.bayeux.sessions[second.client_id or ""].deliver("/wake", 2)
    batch = await asyncio.wait_for(poll, 1.0)
    assert batch[0] == {"channel": "/wake", "data": 2}
    assert "multiple-clients" not in batch[-1]["advice"]


async def test_a_websocket_in_the_same_browser_does_not_count_as_a_long_poll(
    live: LiveServer,
) -> None:
    browser = live.browser()
    socket = await browser.ws_connected()
    await browser.ws_connect(socket)
    await wait_until(held_connect(live.bayeux, browser.client_id))
    polling = await browser.tab().connected()
    poll = asyncio.create_task(polling.connect())
    await wait_until(held_connect(live.bayeux, polling.client_id))
    live.bayeux.sessions[polling.client_id or ""].deliver("/wake", 1)
    batch = await asyncio.wait_for(poll, 1.0)
    assert "multiple-clients" not in batch[-1]["advice"]


async def test_sessions_in_different_browsers_are_all_held(live: LiveServer) -> None:
    first = await live.browser().connected()
    second = await live.browser().connected()
    polls = [asyncio.create_task(browser.connect()) for browser in (first, second)]
    for browser in (first, second):
        await wait_until(held_connect(live.bayeux, browser.client_id))
    for browser in (first, second):
        live.bayeux.sessions[browser.client_id or ""].deliver("/wake", 1)
    for batch in await asyncio.gather(*polls):
        assert "multiple-clients" not in batch[-1]["advice"]


@pytest.mark.parametrize("status", [500, 409])
async def test_duplicate_connect_answers_the_held_one_with_an_http_error(
    start_live: LiveFactory, status: int
) -> None:
    live = await start_live(fast_options(duplicate_meta_connect_http_response_code=status))
    browser = await live.browser().connected()
    first = asyncio.create_task(
        browser.post(browser.message(p.META_CONNECT, connectionType="long-polling"))
    )
    await wait_until(held_connect(live.bayeux, browser.client_id))
    [second] = await browser.connect(advice={"timeout": 0})
    assert second["successful"] is True
    superseded = await asyncio.wait_for(first, 1.0)
    assert superseded.status == status
    # The superseded poll no longer counts against the browser: the next one is held.
    poll = asyncio.create_task(browser.connect())
    await wait_until(held_connect(live.bayeux, browser.client_id))
    live.bayeux.sessions[browser.client_id or ""].deliver("/wake", 1)
    batch = await asyncio.wait_for(poll, 1.0)
    assert "multiple-clients" not in batch[-1]["advice"]


# -- malformed requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ["[{", "not json", "", "[]", "{}x", "[1, 2]", '"text"', "[null]"],
    ids=["truncated", "text", "empty-body", "empty-batch", "trailing", "numbers", "string", "null"],
)
async def test_malformed_bodies_are_answered_with_400(live: LiveServer, body: str) -> None:
    reply = await live.browser().post_raw(body)
    assert reply.status == 400
    assert live.bayeux.sessions == {}


async def test_batch_over_max_batch_is_answered_with_400(start_live: LiveFactory) -> None:
    live = await start_live(fast_options(max_batch=3))
    reply = await live.browser().post(*[handshake_message()] * 4)
    assert reply.status == 400
    assert "too many messages" in reply.text


async def test_body_over_max_message_size_is_answered_with_413(start_live: LiveFactory) -> None:
    live = await start_live(fast_options(max_message_size=1024))
    big = handshake_message(ext={"pad": "x" * 2000})
    reply = await live.browser().post(big)
    assert reply.status == 413
    assert live.bayeux.sessions == {}


async def test_chunked_body_over_max_message_size_is_answered_with_413(
    start_live: LiveFactory,
) -> None:
    live = await start_live(fast_options(max_message_size=1024))
    browser = live.browser()

    async def chunks() -> AsyncIterator[bytes]:
        body = bayeux_json([handshake_message(ext={"pad": "x" * 3000})])
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    async with browser.session.post(
        browser.url(), data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
    assert live.bayeux.sessions == {}


async def test_body_of_exactly_max_message_size_is_accepted(start_live: LiveFactory) -> None:
    live = await start_live(fast_options(max_message_size=1024))
    body = bayeux_json([handshake_message(ext={"pad": ""})])
    padded = bayeux_json([handshake_message(ext={"pad": "x" * (1024 - len(body))})])
    assert len(padded) == 1024
    reply = await live.browser().post_raw(padded)
    assert reply.status == 200


async def test_other_http_methods_are_refused(live: LiveServer) -> None:
    browser = live.browser()
    async with browser.session.put(browser.url(), data=b"[]") as response:
        assert response.status == 405


# -- form encoding and JSONP -------------------------------------------------------------------


async def test_form_encoded_message_parameter_is_accepted(live: LiveServer) -> None:
    browser = live.browser()
    body = "message=" + quote(orjson.dumps([handshake_message()]).decode())
    reply = await browser.post_raw(body, content_type=FORM)
    assert reply.status == 200
    [handshake] = reply.json()
    assert handshake["successful"] is True


async def test_every_form_message_parameter_is_processed_in_order(live: LiveServer) -> None:
    browser = await live.browser().connected()
    subscribe = browser.message(p.META_SUBSCRIBE, subscription="/t")
    publish = browser.message("/t", data=1)
    body = "&".join(
        "message=" + quote(orjson.dumps(message).decode()) for message in (subscribe, publish)
    )
    reply = await browser.post_raw(body, content_type=FORM)
    assert [(r["channel"], r["successful"]) for r in reply.json()] == [
        (p.META_SUBSCRIBE, True),
        ("/t", True),
    ]


async def test_json_posted_with_a_form_content_type_is_accepted(live: LiveServer) -> None:
    reply = await live.browser().post_raw(bayeux_json([handshake_message()]), content_type=FORM)
    assert reply.status == 200
    assert reply.json()[0]["successful"] is True


async def test_form_without_a_message_parameter_is_answered_with_400(live: LiveServer) -> None:
    reply = await live.browser().post_raw("other=1", content_type=FORM)
    assert reply.status == 400


async def test_jsonp_get_wraps_the_reply_in_the_named_callback(live: LiveServer) -> None:
    browser = live.browser()
    reply = await browser.get(jsonp="cb", message=handshake_parameter())
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/javascript")
    assert reply.text.startswith("cb(") and reply.text.endswith(");")
    [handshake] = orjson.loads(reply.text[len("cb(") : -len(");")])
    assert handshake["successful"] is True
    assert live.bayeux.sessions[handshake["clientId"]].transport == p.CALLBACK_POLLING


async def test_jsonp_without_a_callback_name_uses_jsonpcallback(live: LiveServer) -> None:
    reply = await live.browser().get(message=handshake_parameter())
    assert reply.text.startswith("jsonpcallback(")


async def test_jsonp_session_can_connect_with_its_cookie(live: LiveServer) -> None:
    browser = live.browser()
    reply = await browser.get(jsonp="cb", message=handshake_parameter())
    [handshake] = orjson.loads(reply.text[3:-2])
    connect = {
        "channel": p.META_CONNECT,
        "id": "2",
        "clientId": handshake["clientId"],
        "connectionType": "callback-polling",
    }
    reply = await browser.get("/connect", jsonp="cb", message=orjson.dumps([connect]).decode())
    [answer] = orjson.loads(reply.text[3:-2])
    assert answer["successful"] is True


@pytest.mark.parametrize(
    "callback", ["alert(1)//", "a;b", "<script>", "cb\u2028", "x=1", "a[0]", "", "1cb"]
)
async def test_hostile_jsonp_callback_names_are_answered_with_400(
    live: LiveServer, callback: str
) -> None:
    reply = await live.browser().get(
        jsonp=callback, message=handshake_parameter()
    )
    assert reply.status == 400
    assert not reply.text.startswith(callback + "(")
    assert live.bayeux.sessions == {}


async def test_jsonp_get_without_message_is_answered_with_400(live: LiveServer) -> None:
    reply = await live.browser().get(jsonp="cb")
    assert reply.status == 400


async def test_disabled_transport_is_refused(start_live: LiveFactory) -> None:
    live = await start_live(fast_options(allowed_transports=("long-polling",)))
    reply = await live.browser().get(jsonp="cb", message=handshake_parameter())
    assert reply.status == 400
    assert live.bayeux.sessions == {}


async def test_handshake_with_bad_connection_type_element_is_answered_not_crashed(
    live: LiveServer,
) -> None:
    """A handshake offering a non-string connection type must get a Bayeux reply, not HTTP 500."""
    reply = await live.browser().post(handshake_message(supportedConnectionTypes=[["x"], {}]))
    assert reply.status == 200
    [handshake] = reply.json()
    assert handshake["successful"] is False
    assert handshake["error"] == "301::connection_type_unsupported"
