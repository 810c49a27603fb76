"""Mounting a Bayeux server into an aiohttp application, and running one."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from .engine import Engine, MemoryEngine
from .protocol import WEBSOCKET
from .server import BayeuxServer
from .transports.http import cross_origin_headers, handle_http
from .transports.websocket import handle_websocket

BAYEUX_SERVER = web.AppKey("bayeux_server", BayeuxServer)
"""Where `mount` leaves the server in the application, for handlers that need it."""

# The CometD JS client appends the meta message type to the URL (appendMessageTypeToURL).
_META_SUFFIX = "{meta:handshake|connect|disconnect|subscribe|unsubscribe}"


def mount(app: web.Application, server: BayeuxServer, *paths: str) -> None:
    """Serve `server` at each path (default `/cometd`): long-polling, callback-polling and
    websocket on one URL. The server starts and stops with the application."""

    sockets: set[web.WebSocketResponse] = set()

    async def handle(request: web.Request) -> web.StreamResponse:
        cors = cross_origin_headers(server.options.allowed_origins, request)
        if cors is None:
            return web.Response(status=403, text="origin not allowed\n")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade and WEBSOCKET in server.options.allowed_transports:
            return await handle_websocket(server, request, sockets)
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=cors)
        if request.method not in ("GET", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "OPTIONS"])
        response = await handle_http(server, request)
        response.headers.update(cors)
        return response

    for path in paths or ("/cometd",):
        path = path.rstrip("/")
        for route in (path, path + "/", f"{path}/{_META_SUFFIX}"):
            app.router.add_route("*", route, handle)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.close()

    async def shutdown(app: web.Application) -> None:
        # Answer held connects and close websockets now: otherwise a graceful shutdown
        # waits for every held request to time out.
        await server.close()
        for ws in list(sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    app[BAYEUX_SERVER] = server
    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(shutdown)


async def health(request: web.Request) -> web.Response:
    """Liveness for load balancers: 200 while this node can serve, 503 otherwise."""
    server = request.app[BAYEUX_SERVER]
    healthy = server.engine.healthy and not server.draining
    status = "draining" if server.draining else "ok" if healthy else "unhealthy"
    body = {
        "status": status,
        "node": server.engine.node_id,
        "sessions": len(server.sessions),
    }
    return web.json_response(body, status=200 if healthy else 503)


def make_engine(redis_url: str | None, node_id: str | None = None) -> Engine:
    """The memory engine, or the Redis engine when a Redis URL is given."""
    if not redis_url:
        return MemoryEngine()
    from .redis_engine import RedisEngine

    return RedisEngine(redis_url, node_id=node_id)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """`--redis URL` and `--node-id`, shared by every command that runs a server."""
    parser.add_argument(
        "--redis",
        default=os.environ.get("BAYEUX_REDIS_URL"),
        metavar="URL",
        help="share sessions' fan-out with other nodes through Redis (redis://host:port/0)",
    )
    parser.add_argument(
        "--node-id",
        default=os.environ.get("BAYEUX_NODE_ID"),
        help="this node's name in Redis (default: random)",
    )


GC_THRESHOLDS = (10_000, 10, 1_000)
"""CPython's default (700, 10, 10) makes a busy server run a full collection over its whole
heap of sessions every few seconds, stopping the event loop for 100 ms and more; a larger middle
generation is a long pause of its own. These keep young collections small and full ones rare
(still gated by CPython's 25%-growth rule, so garbage cycles are collected): the chat
benchmark's p99 at 1,000 chats went from 22-106 ms to 10-13 ms (load/README.md)."""


def settle_gc() -> None:
    """What exists once the application is built (modules, configuration) is never garbage:
    collect once, freeze it out of every later collection, and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(app: web.Application, host: str, port: int) -> None:
    """Serve an application until interrupted, on uvloop when it is installed."""
    settle_gc()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host=host, port=port, access_log=None, print=None)
