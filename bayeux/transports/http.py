"""long-polling (POST JSON or form) and callback-polling (JSONP over GET) on aiohttp.

A thin shell: read and decode the request, hand the batch to the server, wait for a held
/meta/connect, encode everything in one response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from multidict import MultiDict, MultiMapping

from .. import protocol as p
from ..options import BayeuxOptions
from ..protocol import Message, ProtocolError
from ..server import BatchResult, BayeuxServer, RequestContext
from ..session import Delivery

log = logging.getLogger("bayeux.http")

JSON_TYPE = "application/json"
JSONP_DEFAULT = "jsonpcallback"


async def handle_http(server: BayeuxServer, request: web.Request) -> web.StreamResponse:
    """Serve one long-polling or callback-polling request."""
    jsonp = request.query.get("jsonp") if request.method == "GET" else None
    transport = p.CALLBACK_POLLING if request.method == "GET" else p.LONG_POLLING
    if transport not in server.options.allowed_transports:
        return _error(400, f"transport {transport} is not enabled on this server")
    if jsonp is not None and not p.is_valid_jsonp_callback(jsonp):
        return _error(400, "the jsonp parameter must be a plain JavaScript identifier")
    try:
        messages = await _read_messages(request, server.options)
    except ProtocolError as exc:
        return _error(400, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body over {server.options.max_message_size} bytes")
    context = request_context(server.options, request, transport)
    result = await server.handle_batch(messages, context)
    body = await _complete(server, result, request)
    if body is None:
        return web.Response(status=server.options.duplicate_meta_connect_http_response_code)
    if transport == p.CALLBACK_POLLING:
        response = web.Response(
            body=(jsonp or JSONP_DEFAULT).encode() + b"(" + body + b");",
            content_type="text/javascript",
            charset="utf-8",
        )
    else:
        response = web.Response(body=body, content_type=JSON_TYPE, charset="utf-8")
    response.headers["Cache-Control"] = "no-cache, no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if context.new_browser_id is not None:
        set_browser_cookie(response, server.options, context.new_browser_id)
    return response


def request_context(options: BayeuxOptions, request: web.Request, transport: str) -> RequestContext:
    """The facts of an HTTP request (or websocket upgrade) that the pipeline may use."""
    cookies = request.cookies
    return RequestContext(
        transport=transport,
        headers=request.headers,
        cookies=cookies,
        remote=request.remote,
        browser_id=cookies.get(options.browser_cookie_name),
        request=request,
    )


def set_browser_cookie(response: web.StreamResponse, options: BayeuxOptions, value: str) -> None:
    """The BAYEUX_BROWSER cookie, with the attributes cross-site widgets need.

    Written by hand because the standard library only learns `Partitioned` in Python 3.14.
    """
    attributes = [f"{options.browser_cookie_name}={value}", f"Path={options.browser_cookie_path}"]
    if options.browser_cookie_domain:
        attributes.append(f"Domain={options.browser_cookie_domain}")
    if options.browser_cookie_max_age >= 0:
        attributes.append(f"Max-Age={options.browser_cookie_max_age}")
    if options.browser_cookie_http_only:
        attributes.append("HttpOnly")
    if options.browser_cookie_secure:
        attributes.append("Secure")
    if options.browser_cookie_same_site:
        attributes.append(f"SameSite={options.browser_cookie_same_site}")
    if options.browser_cookie_partitioned:
        attributes.append("Partitioned")
    response.headers.add("Set-Cookie", "; ".join(attributes))


def cross_origin_headers(
    allowed_origins: Collection[str], request: web.Request, methods: str = "GET, POST, OPTIONS"
) -> dict[str, str] | None:
    """CORS headers for a cross-site request, or None if its Origin is refused.

    No Origin, or no allowed origins configured: nothing to add and nothing refused (the
    browser then keeps other sites from reading replies). `*` allows, and echoes, any origin.
    """
    origin = request.headers.get("Origin")
    if origin is None or not allowed_origins or urlsplit(origin).netloc == request.host:
        return {}
    if "*" not in allowed_origins and origin not in allowed_origins:
        return None
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    if request.method == "OPTIONS":
        headers["Access-Control-Allow-Methods"] = methods
        headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Content-Type, Authorization"
        )
        headers["Access-Control-Max-Age"] = "86400"
    return headers


async def _read_messages(request: web.Request, options: BayeuxOptions) -> list[Message]:
    if request.method == "GET":
        return _messages_from_params(request.query, options)
    body = await read_body(request, options.max_message_size)
    if request.content_type == "application/x-www-form-urlencoded" and not _looks_like_json(body):
        return _messages_from_params(MultiDict(parse_qsl(body.decode(errors="replace"))), options)
    return p.decode_batch(body, options.max_batch)


def _looks_like_json(body: bytes) -> bool:
    """Some clients POST JSON labelled as a form; CometD accepts it, so do we."""
    return body.lstrip()[:1] in (b"[", b"{")


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read at most `limit` bytes, refusing larger bodies before buffering them."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


def _messages_from_params(
    params: MultiMapping[str | object], options: BayeuxOptions
) -> list[Message]:
    """Form and JSONP requests carry one or more `message` parameters, each JSON."""
    messages: list[Message] = []
    for value in params.getall("message", []):
        if not isinstance(value, str):
            raise ProtocolError("the message parameter must be text")
        if len(value) > options.max_message_size:
            raise ProtocolError("message parameter too large")
        messages.extend(p.decode_batch(value, options.max_batch))
        if len(messages) > options.max_batch:
            raise ProtocolError(f"too many messages in one request (limit {options.max_batch})")
    if not messages:
        raise ProtocolError("no message parameter")
    return messages


async def _complete(
    server: BayeuxServer, result: BatchResult, request: web.Request
) -> bytes | None:
    """Wait for a held connect, then encode queued messages followed by the replies.

    Returns None when the held connect was superseded by a newer one (answered with an HTTP
    error, as CometD does).
    """
    deliveries: list[Delivery] = []
    replies = result.replies
    held = result.held
    if held is not None:
        try:
            await held.wait()
        except asyncio.CancelledError:
            held.cancel()
            raise
        if held.superseded:
            return None
        if _gone(request):
            # Nobody to answer: keep queued messages for the client's next connect.
            held.cancel()
            return b"[]"
        deliveries, connect_reply = server.finish_connect(held)
        replies = [*replies, connect_reply]
    parts = [d.encoded for d in deliveries]
    parts.extend(p.encode(r) for r in replies)
    return p.encode_batch(parts)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _error(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")
