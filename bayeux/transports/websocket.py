"""The websocket transport on aiohttp: the same JSON batches as text frames.

Deliveries are pushed as soon as they are queued (one frame per session per loop turn);
/meta/connect is still held, as a heartbeat. Frames are written straight to the socket's
transport so that pushing to thousands of sessions costs no task per write; the socket's write
buffer is watched so a slow reader is detected instead of buffered without bound.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from aiohttp import WSMsgType, web

from .. import protocol as p
from ..protocol import ProtocolError
from ..server import BayeuxServer, RequestContext
from ..session import HeldConnect
from .http import request_context, set_browser_cookie

log = logging.getLogger("bayeux.websocket")

WS_CLOSE_INVALID_DATA = 1007
WS_CLOSE_TOO_BIG = 1009


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented RFC 6455 text frame (server to client)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class WebSocketLink:
    """A session's push link over one websocket connection."""

    def __init__(self, transport: asyncio.Transport, buffer_limit: int) -> None:
        self._transport = transport
        self._limit = buffer_limit
        self.sessions: set[str] = set()

    @property
    def writable(self) -> bool:
        transport = self._transport
        return not transport.is_closing() and transport.get_write_buffer_size() < self._limit

    def send(self, payload: bytes) -> bool:
        if self._transport.is_closing():
            return False
        self._transport.write(text_frame(payload))
        return True


async def handle_websocket(
    server: BayeuxServer, request: web.Request, sockets: set[web.WebSocketResponse]
) -> web.StreamResponse:
    """Serve one websocket; `sockets` tracks open ones so shutdown can close them."""
    options = server.options
    ws = web.WebSocketResponse(
        max_msg_size=options.max_message_size,
        heartbeat=options.extra.get("ws_heartbeat", 25.0),
        compress=False,
    )
    context = request_context(options, request, p.WEBSOCKET)
    if context.browser_id is None:
        # Set the browser cookie on the upgrade response: a websocket message cannot.
        context.browser_id = p.new_id()
        set_browser_cookie(ws, options, context.browser_id)
    await ws.prepare(request)
    assert request.transport is not None
    link = WebSocketLink(request.transport, options.ws_write_buffer_limit)
    context.link = link
    sockets.add(ws)
    try:
        async for frame in ws:
            if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            try:
                messages = p.decode_batch(frame.data, options.max_batch)
            except ProtocolError as exc:
                await ws.close(code=WS_CLOSE_INVALID_DATA, message=str(exc)[:120].encode())
                break
            await _handle_frame(server, messages, context, link)
    finally:
        sockets.discard(ws)
        _detach(server, link)
    return ws


async def _handle_frame(
    server: BayeuxServer, messages: list[p.Message], context: RequestContext, link: WebSocketLink
) -> None:
    result = await server.handle_batch(messages, context)
    for reply in result.replies:
        if reply.get("channel") == p.META_HANDSHAKE and reply.get("successful"):
            link.sessions.add(reply["clientId"])
    if result.replies:
        link.send(p.encode_batch([p.encode(r) for r in result.replies]))
    if result.held is not None:
        link.sessions.add(result.held.session.id)
        result.held.on_complete(lambda held: _answer_connect(server, held, link))


def _answer_connect(server: BayeuxServer, held: HeldConnect, link: WebSocketLink) -> None:
    if held.superseded:
        return
    deliveries, reply = server.finish_connect(held)
    parts = [d.encoded for d in deliveries]
    parts.append(p.encode(reply))
    link.send(p.encode_batch(parts))


def _detach(server: BayeuxServer, link: WebSocketLink) -> None:
    """The socket closed: its sessions keep their queues until they reconnect or expire."""
    for session_id in link.sessions:
        session = server.sessions.get(session_id)
        if session is None or session.link is not link:
            continue
        session.link = None
        if session.held is not None:
            session.held.cancel()
