"""Shared fixtures and helpers for the in-process tests of the bayeux core.

Two ways in:

* `PipelineClient` drives `BayeuxServer.handle_batch` directly with a `RequestContext`, as a
  transport would, with no HTTP at all. Each client is its own "browser".
* `LiveServer` serves an application built by `bayeux.__main__.build_app` on a free loopback
  port; `Browser` talks to it over real HTTP and websockets with its own cookie jar.

Every server is configured with small timeouts (`fast_options`) so that held connects end
quickly, and with a sweep period long enough that sessions never expire behind a test's back:
tests of expiry call `server.sweep()` themselves.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, ParamSpec, Self, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from yarl import URL

from bayeux import BayeuxOptions, BayeuxServer, Message, RequestContext, SecurityPolicy
from bayeux import protocol as p
from bayeux.__main__ import build_app
from bayeux.app import BAYEUX_SERVER
from bayeux.server import BatchResult
from bayeux.session import HeldConnect
from tests.support.redis_server import RedisServer

TIMEOUT_MS = 500
"""How long the test servers hold a /meta/connect."""
MAX_INTERVAL_MS = 300
"""How long the test servers keep a session without /meta/connect (only via `sweep()`)."""
WAIT = 3.0
"""Upper bound, in seconds, for anything a test waits on that should happen much sooner."""


def fast_options(**overrides: Any) -> BayeuxOptions:
    """Options for tests: short connect timeout and max interval, no background expiry."""
    values: dict[str, Any] = {
        "timeout": TIMEOUT_MS,
        "max_interval": MAX_INTERVAL_MS,
        "sweep_period": 3_600_000,
    }
    values.update(overrides)
    return BayeuxOptions(**values)


def standard_server(
    options: BayeuxOptions | None = None, security: SecurityPolicy | None = None
) -> BayeuxServer:
    """A server configured exactly as the standalone one (ack, timesync, the echo services)."""
    server = build_app(options or fast_options())[BAYEUX_SERVER]
    if security is not None:
        server.security = security
    return server


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll `condition` on the event loop until it holds; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def held_connect(server: BayeuxServer, client_id: str | None) -> Callable[[], bool]:
    """A condition for `wait_until`: the session has a /meta/connect held."""
    def holding() -> bool:
        session = server.sessions.get(client_id or "")
        return session is not None and session.held is not None

    return holding


def assert_refused(reply: Message, error: str, reconnect: str) -> None:
    """An unsuccessful reply with this error and the advice `{reconnect, interval: 0}`."""
    assert reply["successful"] is False
    assert reply["error"] == error
    assert reply["advice"] == {"reconnect": reconnect, "interval": 0}


P = ParamSpec("P")
T = TypeVar("T")


class Started(Generic[P, T]):
    """An async factory for a fixture to yield: calls `start` and keeps what it returns; on
    leaving `async with`, `close` closes each of them, in the order started.

        async with Started(make, BayeuxServer.close) as make_server:
            yield make_server
    """

    def __init__(
        self, start: Callable[P, Awaitable[T]], close: Callable[[T], Awaitable[object]]
    ) -> None:
        self.items: list[T] = []
        self._start = start
        self._close = close

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        item = await self._start(*args, **kwargs)
        self.items.append(item)
        return item

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for item in self.items:
            await self._close(item)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server, one per test module (tests that need it empty flush it)."""
    with RedisServer() as server:
        yield server


class BayeuxClientBase:
    """What every test client has: numbered messages, and its clientId once handshaken."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self._ids = itertools.count(1)

    def message(self, channel: str, **fields: Any) -> Message:
        """A message from this client: a fresh `id`, and its `clientId` once it has one."""
        message: Message = {"channel": channel, "id": str(next(self._ids))}
        if self.client_id is not None and channel != p.META_HANDSHAKE:
            message["clientId"] = self.client_id
        message.update(fields)
        return message

    @staticmethod
    def handshake_fields(connection_types: list[str], fields: dict[str, Any]) -> dict[str, Any]:
        """A handshake's fields: version 1.0 and these connection types, unless `fields` say."""
        return {"version": "1.0", "supportedConnectionTypes": connection_types, **fields}

    def handshaken(self, reply: Message) -> Message:
        """The handshake reply, after keeping the clientId it gives (if successful)."""
        if reply.get("successful"):
            self.client_id = reply["clientId"]
        return reply


# -- the pipeline, without HTTP -------------------------------------------------------------


class PipelineClient(BayeuxClientBase):
    """One Bayeux client that hands its messages straight to `BayeuxServer.handle_batch`.

    Its `context` plays the browser: the handshake stores a new browser id in it, and every
    later message carries it, as the BAYEUX_BROWSER cookie would.
    """

    def __init__(self, server: BayeuxServer, transport: str = p.LONG_POLLING) -> None:
        super().__init__()
        self.server = server
        self.context = RequestContext(transport=transport)

    async def send(self, *messages: Message) -> BatchResult:
        return await self.server.handle_batch(list(messages), self.context)

    async def request(self, channel: str, **fields: Any) -> Message:
        """Send one message that is answered at once, and return its only reply."""
        result = await self.send(self.message(channel, **fields))
        assert result.held is None, f"{channel} was answered with a held connect"
        [reply] = result.replies
        return reply

    async def handshake(self, **fields: Any) -> Message:
        values = self.handshake_fields([p.LONG_POLLING, p.WEBSOCKET], fields)
        return self.handshaken(await self.request(p.META_HANDSHAKE, **values))

    async def start_connect(self, **fields: Any) -> HeldConnect:
        """Send /meta/connect and return the (possibly already complete) held reply."""
        result = await self.send(
            self.message(p.META_CONNECT, connectionType=self.context.transport, **fields)
        )
        assert not result.replies, result.replies
        assert result.held is not None
        return result.held

    async def finish(self, held: HeldConnect) -> tuple[list[Message], Message]:
        """Wait for a held connect (bounded by WAIT) and return its deliveries and reply."""
        await asyncio.wait_for(held.wait(), WAIT)
        deliveries, reply = self.server.finish_connect(held)
        return [d.message for d in deliveries], reply

    async def connect(self, **fields: Any) -> tuple[list[Message], Message]:
        """One whole /meta/connect round trip: the messages it carried, and its reply (which
        comes straight back, without a held connect, when the session is unknown)."""
        result = await self.send(
            self.message(p.META_CONNECT, connectionType=self.context.transport, **fields)
        )
        if result.held is None:
            [reply] = result.replies
            return [], reply
        assert not result.replies, result.replies
        return await self.finish(result.held)

    async def poll(self) -> list[Message]:
        """The messages queued for this client now, via a connect that does not wait."""
        deliveries, reply = await self.connect(advice={"timeout": 0})
        assert reply["successful"] is True, reply
        return deliveries

    async def subscribe(self, subscription: str | list[str], **fields: Any) -> Message:
        return await self.request(p.META_SUBSCRIBE, subscription=subscription, **fields)

    async def unsubscribe(self, subscription: str | list[str]) -> Message:
        return await self.request(p.META_UNSUBSCRIBE, subscription=subscription)

    async def publish(self, channel: str, data: Any, **fields: Any) -> Message:
        return await self.request(channel, data=data, **fields)

    async def disconnect(self) -> Message:
        return await self.request(p.META_DISCONNECT)


async def connected_client(
    server: BayeuxServer, transport: str = p.LONG_POLLING, **handshake_fields: Any
) -> PipelineClient:
    """A client that has handshaken and done its first (immediate) /meta/connect."""
    client = PipelineClient(server, transport)
    reply = await client.handshake(**handshake_fields)
    assert reply["successful"] is True, reply
    _, connect = await client.connect()
    assert connect["successful"] is True, connect
    return client


ServerFactory = Callable[..., Awaitable[BayeuxServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """`await make_server(options=None, security=None)`: a started standard server, closed
    after the test."""

    async def make(
        options: BayeuxOptions | None = None, security: SecurityPolicy | None = None
    ) -> BayeuxServer:
        server = standard_server(options, security)
        await server.start()
        return server

    async with Started(make, BayeuxServer.close) as servers:
        yield servers


@pytest.fixture
async def server(make_server: ServerFactory) -> BayeuxServer:
    """A started standard server with `fast_options()`."""
    return await make_server()


# -- real HTTP and websockets ---------------------------------------------------------------


def bayeux_json(payload: Any) -> bytes:
    return orjson.dumps(payload)


@dataclass
class HttpReply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return orjson.loads(self.text)


class BayeuxSocket:
    """A websocket to the server, read as Bayeux batches.

    Everything received is kept: `frames` (one decoded batch per text frame) and `inbox` (all
    messages in arrival order), so a test can look for a message whatever arrived before it.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[list[Message]] = []
        self.inbox: list[Message] = []

    async def send(self, *messages: Message) -> None:
        await self.ws.send_str(bayeux_json(list(messages)).decode())

    async def receive_frame(self, timeout: float = WAIT) -> list[Message]:
        """The next text frame, decoded; fails on anything else."""
        frame = await self.ws.receive(timeout=timeout)
        assert frame.type == WSMsgType.TEXT, f"expected a text frame, got {frame}"
        batch = orjson.loads(frame.data)
        assert isinstance(batch, list), batch
        self.frames.append(batch)
        self.inbox.extend(batch)
        return batch

    async def wait_for(
        self, condition: Callable[[list[Message]], bool], timeout: float = WAIT
    ) -> list[Message]:
        """Read frames until `condition(inbox)` holds; returns the inbox."""
        async with asyncio.timeout(timeout):
            while not condition(self.inbox):
                await self.receive_frame()
        return self.inbox

    async def reply_to(self, message: Message, timeout: float = WAIT) -> Message:
        """The reply to `message` (same channel and id), received already or next."""
        inbox = await self.wait_for(lambda got: any(_is_reply(r, message) for r in got), timeout)
        return next(r for r in inbox if _is_reply(r, message))

    async def deliveries(self, channel: str, count: int, timeout: float = WAIT) -> list[Any]:
        """The data of the first `count` messages delivered on `channel` (not replies)."""
        def on_channel(got: list[Message]) -> list[Any]:
            return [m["data"] for m in got if m.get("channel") == channel and "successful" not in m]

        await self.wait_for(lambda got: len(on_channel(got)) >= count, timeout)
        return on_channel(self.inbox)[:count]

    async def close_code(self, timeout: float = WAIT) -> int | None:
        """Wait for the server to close the socket and return its close code."""
        frame = await self.ws.receive(timeout=timeout)
        assert frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), frame
        return self.ws.close_code


def _is_reply(candidate: Message, message: Message) -> bool:
    return candidate.get("channel") == message["channel"] and candidate.get("id") == message["id"]


class Browser(BayeuxClientBase):
    """One HTTP client with its own cookie jar, as the server sees a browser."""

    def __init__(
        self, base: URL, path: str = "/cometd", session: aiohttp.ClientSession | None = None
    ) -> None:
        super().__init__()
        self._owns_session = session is None
        # unsafe=True: keep cookies from an IP-address host (the server is on 127.0.0.1).
        self.session = session or aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.base = base
        self.path = path
        self.sockets: list[BayeuxSocket] = []

    def tab(self) -> Browser:
        """Another Bayeux client in the same browser: same cookies, its own clientId."""
        tab = Browser(self.base, self.path, self.session)
        tab.sockets = self.sockets
        return tab

    def url(self, suffix: str = "") -> URL:
        return self.base.with_path(self.path + suffix)

    async def post_raw(
        self,
        body: bytes | str,
        suffix: str = "",
        content_type: str = "application/json;charset=UTF-8",
        cookies: bool = True,
    ) -> HttpReply:
        headers = {"Content-Type": content_type}
        if cookies:
            return await _post(self.session, self.url(suffix), body, headers)
        # Send no cookie at all, as a browser blocking third-party cookies would.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bare:
            return await _post(bare, self.url(suffix), body, headers)

    async def post(self, *messages: Message, suffix: str = "", cookies: bool = True) -> HttpReply:
        return await self.post_raw(bayeux_json(list(messages)), suffix, cookies=cookies)

    async def get(self, suffix: str = "", **params: str) -> HttpReply:
        async with self.session.get(self.url(suffix), params=params) as response:
            return HttpReply(response.status, response.headers, await response.text())

    async def request(self, channel: str, suffix: str = "", **fields: Any) -> list[Message]:
        """POST one message and return the whole reply batch (HTTP 200 required)."""
        reply = await self.post(self.message(channel, **fields), suffix=suffix)
        assert reply.status == 200, (reply.status, reply.text)
        batch = reply.json()
        assert isinstance(batch, list)
        return batch

    async def handshake(self, **fields: Any) -> Message:
        values = self.handshake_fields([p.LONG_POLLING], fields)
        [reply] = await self.request(p.META_HANDSHAKE, "/handshake", **values)
        return self.handshaken(reply)

    async def connect(self, **fields: Any) -> list[Message]:
        return await self.request(
            p.META_CONNECT, "/connect", connectionType=p.LONG_POLLING, **fields
        )

    async def connected(self) -> Browser:
        """Handshake and do the first (immediate) connect."""
        assert (await self.handshake())["successful"] is True
        *_, reply = await self.connect()
        assert reply["successful"] is True, reply
        return self

    async def websocket(self) -> BayeuxSocket:
        ws = await self.session.ws_connect(self.url())
        socket = BayeuxSocket(ws)
        self.sockets.append(socket)
        return socket

    async def ws_request(self, socket: BayeuxSocket, channel: str, **fields: Any) -> Message:
        """Send one message over a websocket and wait for its reply."""
        message = self.message(channel, **fields)
        await socket.send(message)
        return await socket.reply_to(message)

    async def ws_handshake(self, socket: BayeuxSocket, **fields: Any) -> Message:
        values = self.handshake_fields([p.WEBSOCKET], fields)
        return self.handshaken(await self.ws_request(socket, p.META_HANDSHAKE, **values))

    async def ws_connect(self, socket: BayeuxSocket, **fields: Any) -> Message:
        """Send /meta/connect over a websocket without waiting for its reply."""
        message = self.message(p.META_CONNECT, connectionType=p.WEBSOCKET, **fields)
        await socket.send(message)
        return message

    async def ws_connected(self) -> BayeuxSocket:
        """A websocket whose session has handshaken and done its first connect."""
        socket = await self.websocket()
        assert (await self.ws_handshake(socket))["successful"] is True
        reply = await socket.reply_to(await self.ws_connect(socket))
        assert reply["successful"] is True, reply
        return socket

    def cookie(self, name: str = "BAYEUX_BROWSER") -> str | None:
        for morsel in self.session.cookie_jar:
            if morsel.key == name:
                return morsel.value
        return None

    async def close(self) -> None:
        if self._owns_session:
            for socket in self.sockets:
                await socket.ws.close()
            await self.session.close()


async def _post(
    session: aiohttp.ClientSession, url: URL, body: bytes | str, headers: dict[str, str]
) -> HttpReply:
    async with session.post(url, data=body, headers=headers) as response:
        return HttpReply(response.status, response.headers, await response.text())


@dataclass
class LiveServer:
    """The standalone application served on a free loopback port."""

    http: TestServer
    bayeux: BayeuxServer
    browsers: list[Browser] = field(default_factory=list)

    @property
    def base(self) -> URL:
        return self.http.make_url("/")

    def browser(self) -> Browser:
        browser = Browser(self.base)
        self.browsers.append(browser)
        return browser

    async def close(self) -> None:
        for browser in self.browsers:
            await browser.close()
        await self.http.close()


LiveFactory = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def start_live() -> AsyncIterator[LiveFactory]:
    """`await start_live(options=None)`: the standalone app on a free port, closed afterwards."""

    async def start(options: BayeuxOptions | None = None) -> LiveServer:
        app = build_app(options or fast_options())
        http = TestServer(app, host="127.0.0.1")
        await http.start_server()
        return LiveServer(http, app[BAYEUX_SERVER])

    async with Started(start, LiveServer.close) as servers:
        yield servers


@pytest.fixture
async def live(start_live: LiveFactory) -> LiveServer:
    """The standalone app with `fast_options()`."""
    return await start_live()
