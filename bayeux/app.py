"""Mounting a Bayeux server into an aiohttp application."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .protocol import WEBSOCKET
from .server import BayeuxServer
from .transports.http import handle_http
from .transports.websocket import handle_websocket

# The CometD JS client appends the meta message type to the URL (appendMessageTypeToURL).
_META_SUFFIX = "{meta:handshake|connect|disconnect|subscribe|unsubscribe}"


def mount(app: web.Application, server: BayeuxServer, *paths: str) -> None:
    """Serve `server` at each path (default `/cometd`): long-polling, callback-polling and
    websocket on one URL. The server starts and stops with the application."""

    async def handle(request: web.Request) -> web.StreamResponse:
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade and WEBSOCKET in server.options.allowed_transports:
            return await handle_websocket(server, request)
        if request.method not in ("GET", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return await handle_http(server, request)

    for path in paths or ("/cometd",):
        path = path.rstrip("/")
        for route in (path, path + "/", f"{path}/{_META_SUFFIX}"):
            app.router.add_route("*", route, handle)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.close()

    app.cleanup_ctx.append(lifecycle)
