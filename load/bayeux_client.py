"""A lean Bayeux client for load generation: raw asyncio protocols, no server code.

Both transports are hand-rolled ``asyncio.Protocol`` classes (a minimal
HTTP/1.1 keep-alive client and a minimal RFC 6455 websocket client) so that an
incoming frame or response is parsed and dispatched from ``data_received``
without waking a task per message: the generator must stay much cheaper than
the server it measures. JSON goes through orjson.

``BayeuxClient`` speaks the protocol (handshake, subscribe, the /meta/connect
loop, publish with per-client batching) and reports deliveries, publish acks
and errors to a ``Sink`` (``bench_stats.Recorder``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import orjson

_apply_mask: Callable[[bytes, bytes], bytes] | None
try:  # C masking helper shipped with the websockets package
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - pure Python fallback
    _apply_mask = None

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Message = dict[str, Any]


class BayeuxError(Exception):
    """A protocol-level failure (bad status, unsuccessful reply, closed socket)."""


class Sink(Protocol):
    def delivered(self, now_ns: int, sent_ns: int) -> None: ...
    def delivered_untimed(self, now_ns: int) -> None: ...
    def acked(self, now_ns: int, successful: bool, expected: int) -> None: ...
    def connected(self, now_ns: int) -> None: ...
    def frame(self, now_ns: int) -> None: ...
    def error(self, kind: str, detail: str = "") -> None: ...


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "ws"):
            raise ValueError(f"only plain http:// or ws:// URLs are supported: {url}")
        host = "127.0.0.1" if parts.hostname == "localhost" else (parts.hostname or "")
        if host != "127.0.0.1":
            raise ValueError(f"refusing to load anything but 127.0.0.1: {host!r}")
        return cls(host, parts.port or 80, parts.path or "/cometd")

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"


class CookieJar:
    """Name=value cookies of one simulated browser (path/expiry are ignored)."""

    def __init__(self) -> None:
        self._cookies: dict[str, str] = {}
        self.header = ""

    def update(self, set_cookie_values: list[str]) -> None:
        for value in set_cookie_values:
            name, _, rest = value.partition("=")
            self._cookies[name.strip()] = rest.split(";", 1)[0].strip()
        self.header = "; ".join(f"{k}={v}" for k, v in self._cookies.items())


def _parse_head(head: bytes) -> tuple[int, dict[str, str], list[str]]:
    """Status, lower-cased headers and the Set-Cookie values of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise BayeuxError(f"bad status line {lines[0]!r}") from exc
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "set-cookie":
            cookies.append(value)
        headers[name] = value
    return status, headers, cookies


# ---------------------------------------------------------------------------
# HTTP/1.1 keep-alive connection (long-polling)
# ---------------------------------------------------------------------------
class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, dict[str, str], list[str], bytes]] | None = None
        self._head: tuple[int, dict[str, str], list[str]] | None = None

    @classmethod
    async def open(cls, endpoint: Endpoint) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, endpoint.host, endpoint.port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.transport = None
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if self._head is not None and "content-length" not in self._head[1] \
                and "chunked" not in self._head[1].get("transfer-encoding", ""):
            waiter.set_result((*self._head, bytes(self._buf)))  # body delimited by close
        else:
            waiter.set_exception(BayeuxError(f"connection lost: {exc}"))

    async def post(self, endpoint: Endpoint, body: bytes,
                   cookie: str) -> tuple[int, dict[str, str], list[str], bytes]:
        if self.transport is None or self._waiter is not None:
            raise BayeuxError("connection not usable")
        self._waiter = asyncio.get_running_loop().create_future()
        cookie_line = f"Cookie: {cookie}\r\n" if cookie else ""
        head = (f"POST {endpoint.path} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
                f"Content-Type: application/json;charset=UTF-8\r\n{cookie_line}"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.transport.write(head.encode("latin-1") + body)
        return await self._waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is None:
            self.close()  # unsolicited bytes: the stream is out of sync
            return
        try:
            result = self._parse()
        except BayeuxError as exc:
            self._finish(exc)
            return
        if result is not None:
            self._finish(result)

    def _finish(self, result: Any) -> None:
        waiter, self._waiter, self._head = self._waiter, None, None
        if isinstance(result, BayeuxError):
            self.close()
            if waiter is not None and not waiter.done():
                waiter.set_exception(result)
        elif waiter is not None and not waiter.done():
            waiter.set_result(result)

    def _parse(self) -> tuple[int, dict[str, str], list[str], bytes] | None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return None
            self._head = _parse_head(bytes(buf[:end]))
            del buf[:end + 4]
        status, headers, cookies = self._head
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        if "chunked" in headers.get("transfer-encoding", ""):
            body = self._parse_chunked()
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if len(buf) < length:
                return None
            body = bytes(buf[:length])
            del buf[:length]
        else:
            self.reusable = False
            return None  # delimited by connection close
        if body is None:
            return None
        return status, headers, cookies, body

    def _parse_chunked(self) -> bytes | None:
        buf, pos, chunks = self._buf, 0, list[bytes]()
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
            pos = line_end + 2
            if size == 0:
                if buf[pos:pos + 2] == b"\r\n":
                    end = pos + 2
                else:
                    trailer_end = buf.find(b"\r\n\r\n", pos)
                    if trailer_end < 0:
                        return None
                    end = trailer_end + 4
                body = b"".join(chunks)
                del buf[:end]
                return body
            if len(buf) < pos + size + 2:
                return None
            chunks.append(bytes(buf[pos:pos + size]))
            pos += size + 2


class HttpPool:
    """At most ``size`` keep-alive connections of one simulated browser."""

    def __init__(self, endpoint: Endpoint, jar: CookieJar, size: int = 2,
                 trace: Callable[[str, bytes], None] | None = None) -> None:
        self._endpoint = endpoint
        self._jar = jar
        self._trace = trace
        self._slots = asyncio.Semaphore(size)
        self._idle: list[HttpConnection] = []
        self.opened = 0

    async def post(self, body: bytes) -> bytes:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.transport is None:
                conn = await HttpConnection.open(self._endpoint)
                self.opened += 1
            try:
                status, _, cookies, payload = await conn.post(self._endpoint, body,
                                                              self._jar.header)
            except BaseException:
                conn.close()
                raise
            if conn.reusable:
                self._idle.append(conn)
            else:
                conn.close()
        if self._trace is not None:
            cookie_note = f" Set-Cookie: {cookies}" if cookies else ""
            self._trace("<<", f"HTTP {status}{cookie_note}".encode())
        if cookies:
            self._jar.update(cookies)
        if status != 200:
            raise BayeuxError(f"HTTP {status}: {payload[:200]!r}")
        return payload

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


# ---------------------------------------------------------------------------
# Websocket connection
# ---------------------------------------------------------------------------
def _mask(payload: bytes, key: bytes) -> bytes:
    if _apply_mask is not None:
        return bytes(_apply_mask(payload, key))
    n = len(payload)
    keystream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")


def encode_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A single masked client frame (FIN set)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class WsConnection(asyncio.Protocol):
    """Client side of one websocket; text messages go to ``on_text``."""

    def __init__(self, endpoint: Endpoint, jar: CookieJar,
                 on_text: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._endpoint = endpoint
        self._jar = jar
        self._on_text = on_text
        self._on_close = on_close
        self._key = base64.b64encode(os.urandom(16))
        self._upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head = bytearray()
        self._pending: list[bytes] = []  # bytes of an incomplete frame
        self._pending_len = 0
        self._need = 0  # bytes needed before parsing again
        self._fragments: list[bytes] = []

    @classmethod
    async def open(cls, endpoint: Endpoint, jar: CookieJar, on_text: Callable[[bytes], None],
                   on_close: Callable[[], None]) -> WsConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: cls(endpoint, jar, on_text, on_close), endpoint.host, endpoint.port)
        try:
            await protocol._upgraded
        except BaseException:
            protocol.close()
            raise
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        cookie = f"Cookie: {self._jar.header}\r\n" if self._jar.header else ""
        request = (f"GET {self._endpoint.path} HTTP/1.1\r\nHost: {self._endpoint.host_header}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {self._key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
                   f"{cookie}\r\n")
        self.transport.write(request.encode("latin-1"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._upgraded.done():
            self._upgraded.set_exception(BayeuxError(f"websocket upgrade failed: {exc}"))
        self._on_close()

    def send_text(self, payload: bytes) -> None:
        if self.transport is None:
            raise BayeuxError("websocket closed")
        self.transport.write(encode_frame(payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._upgraded.done():
            data = self._read_upgrade(data)
            if not data:
                return
        if (not self._pending and len(data) > 1 and data[0] == 0x81 and data[1] < 126
                and len(data) == data[1] + 2):
            self._on_text(data[2:])  # fast path: exactly one small unmasked text frame
            return
        if self._pending:
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return
            data = b"".join(self._pending)
            self._pending.clear()
        rest, self._need = self._parse_frames(data)
        if rest:
            self._pending.append(rest)
            self._pending_len = len(rest)

    def _read_upgrade(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        status, headers, cookies = _parse_head(bytes(self._head[:end]))
        rest = bytes(self._head[end + 4:])
        self._head.clear()
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest()).decode()
        if status != 101 or headers.get("sec-websocket-accept") != accept:
            self._upgraded.set_exception(BayeuxError(f"websocket upgrade refused: {status}"))
            self.close()
            return b""
        self._jar.update(cookies)
        self._upgraded.set_result(None)
        return rest

    def _parse_frames(self, data: bytes) -> tuple[bytes, int]:
        """Dispatch every complete frame in ``data``.

        Returns the incomplete tail and how many bytes (from the tail's start)
        are needed before it is worth parsing again.
        """
        pos, size = 0, len(data)
        while pos < size:
            avail = size - pos
            if avail < 2:
                return data[pos:], 2
            b0, b1 = data[pos], data[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if avail < 4:
                    return data[pos:], 4
                length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if avail < 10:
                    return data[pos:], 10
                length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
            masked = b1 & 0x80  # servers must not mask, but be lenient
            if masked:
                head += 4
            if avail < head + length:
                return data[pos:], head + length
            payload = data[pos + head:pos + head + length]
            if masked:
                payload = _mask(payload, data[pos + head - 4:pos + head])
            pos += head + length
            self._on_frame(b0, payload)
        return b"", 0

    def _on_frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (0x1, 0x2):
            if b0 & 0x80:
                self._on_text(payload)
            else:
                self._fragments = [payload]
        elif opcode == 0x0:
            self._fragments.append(payload)
            if b0 & 0x80:
                message, self._fragments = b"".join(self._fragments), []
                self._on_text(message)
        elif opcode == 0x9 and self.transport is not None:
            self.transport.write(encode_frame(payload, 0xA))
        elif opcode == 0x8 and self.transport is not None:
            self.transport.write(encode_frame(payload[:2], 0x8))
            self.transport.close()


# ---------------------------------------------------------------------------
# Bayeux session
# ---------------------------------------------------------------------------
class BayeuxClient:
    """One simulated Bayeux client ("websocket" or "long-polling").

    Publishes are queued with ``publish`` and flushed as one frame (websocket)
    or one POST (long-polling, on the second connection) per loop iteration,
    at most ``batch`` messages each, like the CometD clients' batching.
    """

    def __init__(self, endpoint: Endpoint, transport: str, sink: Sink,
                 batch: int = 100, request_timeout: float = 10.0,
                 trace: Callable[[str, bytes], None] | None = None) -> None:
        if transport not in ("websocket", "long-polling"):
            raise ValueError(f"unknown transport {transport!r}")
        self.endpoint = endpoint
        self.transport = transport
        self.sink = sink
        self.batch = batch
        self.request_timeout = request_timeout
        self.trace = trace  # sees every frame/body sent (">>") and received ("<<")
        self.client_id: str | None = None
        self.connect_timeout_ms = 30_000  # server advice, updated from replies
        self.alive = False  # the /meta/connect loop is running fine
        self.jar = CookieJar()
        self._pool = (HttpPool(endpoint, self.jar, trace=trace) if transport == "long-polling"
                      else None)
        self._ws: WsConnection | None = None
        self._waiters: dict[str, asyncio.Future[Message]] = {}
        self._next_id = 0
        self._outbox: list[Message] = []
        self._expected: dict[str, int] = {}  # publish id -> deliveries it should cause
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._subscriptions: list[str] = []
        self._handshake_ext: Message | None = None
        self.handshake_reply: Message = {}

    # -- public API ----------------------------------------------------------
    async def handshake(self, ext: Message | None = None) -> None:
        """Handshake (with ``ext``, kept for re-handshakes, e.g. ``{"replay": True}``)."""
        if ext is not None:
            self._handshake_ext = ext
        if self.transport == "websocket" and (self._ws is None or self._ws.transport is None):
            self._ws = await WsConnection.open(self.endpoint, self.jar, self._on_text,
                                               self._on_ws_close)
        message: Message = {
            "channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
            "supportedConnectionTypes": [self.transport]}
        if self._handshake_ext is not None:
            message["ext"] = self._handshake_ext
        reply = await self._request(message)
        if not reply.get("successful") or not reply.get("clientId"):
            raise BayeuxError(f"handshake failed: {reply}")
        self.handshake_reply = reply
        self.client_id = reply["clientId"]
        self._apply_advice(reply)

    async def subscribe(self, channels: list[str], ext: Message | None = None,
                        timeout: float | None = None) -> None:
        """Subscribe to every channel in one batch; ``ext`` goes on each subscribe message
        (e.g. ``{"replay": {"/events/x": 0}}``)."""
        if not channels:
            return
        messages: list[Message] = [
            {"channel": "/meta/subscribe", "clientId": self.client_id, "subscription": channel}
            for channel in channels]
        if ext is not None:
            for message in messages:
                message["ext"] = ext
        replies = await self._request_many(messages, timeout)
        failed = [r for r in replies if not r.get("successful")]
        if failed:
            raise BayeuxError(f"subscribe failed: {failed[0]}")
        self._subscriptions = list(channels)

    async def start(self, deadline: float) -> None:
        """Send the first /meta/connect, then keep one outstanding until ``deadline``."""
        await self._connect(first=True)
        self.alive = True
        self._spawn(self._connect_loop(deadline))

    def publish(self, channel: str, data: Any, expected: int = 0) -> None:
        """Queue a publish; ``expected`` deliveries are credited when it is acked."""
        message_id = self._new_id()
        self._outbox.append({"channel": channel, "clientId": self.client_id, "data": data,
                             "id": message_id})
        if expected:
            self._expected[message_id] = expected
        if not self._flushing:
            self._flushing = True
            if self.transport == "websocket":
                asyncio.get_running_loop().call_soon(self._flush_ws)
            else:
                self._spawn(self._flush_http())

    async def close(self, disconnect: bool = True) -> None:
        self._closing = True
        if disconnect and self.client_id is not None and self.alive:
            with contextlib.suppress(BayeuxError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._request(
                    {"channel": "/meta/disconnect", "clientId": self.client_id}), 2.0)
        self.alive = False
        for task in list(self._tasks):
            task.cancel()
        if self._ws is not None:
            self._ws.close()
        if self._pool is not None:
            self._pool.close()
        for waiter in self._waiters.values():
            waiter.cancel()
        self._waiters.clear()

    # -- requests ------------------------------------------------------------
    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    async def _request(self, message: Message, timeout: float | None = None) -> Message:
        return (await self._request_many([message], timeout))[0]

    async def _request_many(self, messages: list[Message],
                            timeout: float | None = None) -> list[Message]:
        loop = asyncio.get_running_loop()
        waiters = []
        for message in messages:
            message["id"] = self._new_id()
            waiter: asyncio.Future[Message] = loop.create_future()
            self._waiters[message["id"]] = waiter
            waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout or self.request_timeout):
                await self._send(messages)
                if self._pool is not None and not all(w.done() for w in waiters):
                    raise BayeuxError(f"no reply to {messages[0]['channel']}")
                return [await waiter for waiter in waiters]
        finally:
            for message in messages:
                self._waiters.pop(message["id"], None)

    async def _send(self, messages: list[Message]) -> None:
        body = orjson.dumps(messages)
        if self.trace is not None:
            self.trace(">>", body)
        if self._pool is not None:
            reply = await self._pool.post(body)
            self._on_text(reply)
        elif self._ws is not None:
            self._ws.send_text(body)
        else:
            raise BayeuxError("not connected")

    # -- /meta/connect -------------------------------------------------------
    async def _connect(self, first: bool = False) -> Message:
        message: Message = {"channel": "/meta/connect", "clientId": self.client_id,
                            "connectionType": self.transport}
        if first:
            message["advice"] = {"timeout": 0}
        reply = await self._request(message, self.connect_timeout_ms / 1000 + self.request_timeout)
        self._apply_advice(reply)
        if not reply.get("successful"):
            raise BayeuxError(f"connect failed: {reply}")
        self.sink.connected(time.time_ns())
        return reply

    async def _connect_loop(self, deadline: float) -> None:
        rehandshakes = 0
        for _ in range(10_000_000):
            if self._closing or time.time() >= deadline:
                break
            try:
                reply = await self._connect()
            except (TimeoutError, BayeuxError, OSError) as exc:
                if self._closing:
                    break
                self.sink.error(f"connect {type(exc).__name__}", str(exc))
                if rehandshakes >= 3 or not await self._rehandshake():
                    self.alive = False
                    break
                rehandshakes += 1
                continue
            interval = reply.get("advice", {}).get("interval", 0)
            if interval:
                await asyncio.sleep(min(interval, 60_000) / 1000)

    async def _rehandshake(self) -> bool:
        await asyncio.sleep(0.5)
        try:
            await self.handshake()
            await self.subscribe(self._subscriptions)
            await self._connect(first=True)
        except (TimeoutError, BayeuxError, OSError) as exc:
            self.sink.error("rehandshake failed", str(exc))
            return False
        self.sink.error("rehandshake")
        return True

    def _apply_advice(self, reply: Message) -> None:
        advice = reply.get("advice")
        if isinstance(advice, dict) and isinstance(advice.get("timeout"), int):
            self.connect_timeout_ms = advice["timeout"]

    # -- publishing ----------------------------------------------------------
    def _take_batch(self) -> list[Message]:
        batch = self._outbox[:self.batch]
        del self._outbox[:self.batch]
        return batch

    def _flush_ws(self) -> None:
        self._flushing = False
        try:
            while self._outbox:
                self._send_ws_batch(self._take_batch())
        except BayeuxError:
            self.sink.error("publish on closed websocket")
            self._outbox.clear()

    def _send_ws_batch(self, batch: list[Message]) -> None:
        if self._ws is None:
            raise BayeuxError("not connected")
        body = orjson.dumps(batch)
        if self.trace is not None:
            self.trace(">>", body)
        self._ws.send_text(body)

    async def _flush_http(self) -> None:
        try:
            for _ in range(1_000_000):
                if not self._outbox or self._closing:
                    break
                await asyncio.wait_for(self._send(self._take_batch()), self.request_timeout)
        except (TimeoutError, BayeuxError, OSError) as exc:
            self.sink.error(f"publish {type(exc).__name__}", str(exc))
        finally:
            self._flushing = False
        if self._outbox and not self._closing:
            self._flushing = True
            self._spawn(self._flush_http())

    # -- incoming ------------------------------------------------------------
    def _on_text(self, payload: bytes) -> None:
        if self.trace is not None:
            self.trace("<<", payload)
        try:
            messages = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.sink.error("bad json", repr(payload[:200]))
            return
        if isinstance(messages, dict):
            messages = [messages]
        self._dispatch(messages, time.time_ns())

    def _dispatch(self, messages: list[Message], now: int) -> None:
        """Count deliveries (and frames or responses carrying any) and route replies;
        subclasses look at deliveries first."""
        sink = self.sink
        replies = 0
        for message in messages:
            data = message.get("data")
            if data is None:
                replies += 1
                self._on_reply(message, now)
            elif type(data) is dict and "t" in data:
                sink.delivered(now, data["t"])
            else:
                sink.delivered_untimed(now)
        if replies < len(messages):
            sink.frame(now)

    def _on_reply(self, message: Message, now: int) -> None:
        waiter = self._waiters.pop(message.get("id", ""), None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(message)
        elif "successful" in message and not message.get("channel", "/meta/").startswith("/meta/"):
            expected = self._expected.pop(message.get("id", ""), 0)
            successful = bool(message["successful"])
            self.sink.acked(now, successful, expected if successful else 0)
        else:
            self.sink.error(f"unexpected message on {message.get('channel')}",
                            orjson.dumps(message).decode())

    def _on_ws_close(self) -> None:
        if self._closing:
            return
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(BayeuxError("websocket closed"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ReplayClient(BayeuxClient):
    """A client of durable channels (the replay extension): handshakes with
    ``ext.replay: true`` and notes every event of ``channel`` as it arrives.

    Each event is kept as ``(replayId, run, seq, arrival ns)`` (``run`` and ``seq`` are what
    the benchmark's publisher put in the data; None for foreign events), so the caller can
    check that every event arrived once, in replayId order.
    """

    def __init__(self, endpoint: Endpoint, transport: str, sink: Sink, channel: str,
                 **kwargs: Any) -> None:
        super().__init__(endpoint, transport, sink, **kwargs)
        self.channel = channel
        self.events: list[tuple[int | None, Any, Any, int]] = []
        self._watch: tuple[Any, int, asyncio.Future[int]] | None = None

    async def handshake(self, ext: Message | None = None) -> None:
        await super().handshake({"replay": True, **(ext or {})})
        reply_ext = self.handshake_reply.get("ext")
        if not isinstance(reply_ext, dict) or reply_ext.get("replay") is not True:
            raise BayeuxError(f"server did not negotiate replay: {self.handshake_reply}")

    async def replay(self, after: int) -> None:
        """Subscribe to the channel asking for every retained event after ``after``."""
        await self.subscribe([self.channel], ext={"replay": {self.channel: after}},
                             timeout=max(self.request_timeout, 60.0))

    def wait_for(self, run: Any, seq: int) -> asyncio.Future[int]:
        """A future set to the arrival time (ns) of event ``seq`` of ``run``."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        for _, event_run, event_seq, arrived in self.events:
            if event_run == run and event_seq == seq:
                future.set_result(arrived)
                return future
        self._watch = (run, seq, future)
        return future

    def _dispatch(self, messages: list[Message], now: int) -> None:
        events, channel, watch = self.events, self.channel, self._watch
        for message in messages:
            data = message.get("data")
            if type(data) is not dict or message.get("channel") != channel:
                continue
            event = data.get("event")
            replay_id = event.get("replayId") if type(event) is dict else None
            run, seq = data.get("run"), data.get("seq")
            events.append((replay_id, run, seq, now))
            if watch is not None and run == watch[0] and seq == watch[1] \
                    and not watch[2].done():
                watch[2].set_result(now)
        super()._dispatch(messages, now)
