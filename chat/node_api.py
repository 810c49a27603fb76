"""GMS Node API: `/genesys/1/admin/node/status` and `.../changestatus/{status}` (Basic auth).

OFFLINE means "this node stops in a few seconds": the Bayeux servers drain (the customers'
and the agents'; their sessions are handed over and their clients told to reconnect, which
the load balancer sends to another node because /health now answers 503). ONLINE takes the
node back.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from bayeux import BayeuxServer

from .auth import BasicAuth

ONLINE = "ONLINE"
OFFLINE = "OFFLINE"


class NodeApi:
    def __init__(
        self, servers: Sequence[BayeuxServer], auth: BasicAuth, protected: bool = True
    ) -> None:
        """`servers`: every Bayeux server of the node; the first one's state is the node's."""
        self.servers = servers
        self.auth = auth
        self.protected = protected

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/genesys/1/admin/node/status", self.status),
            web.get("/genesys/admin/1/node/status", self.status),  # the overview's spelling
            web.post("/genesys/1/admin/node/changestatus/{status}", self.change_status),
        ]

    async def status(self, request: web.Request) -> web.Response:
        await self._authenticate(request)
        text = OFFLINE if self.servers[0].draining else ONLINE
        return web.Response(text=text, content_type="text/plain", charset="ISO-8859-1")

    async def change_status(self, request: web.Request) -> web.Response:
        await self._authenticate(request)
        wanted = request.match_info["status"].upper()
        if wanted == OFFLINE:
            for server in self.servers:
                await server.drain()
        elif wanted == ONLINE:
            for server in self.servers:
                server.resume()
        else:
            raise web.HTTPBadRequest(text="status must be ONLINE or OFFLINE")
        return web.Response(text="", content_type="text/plain")

    async def _authenticate(self, request: web.Request) -> None:
        if self.protected:
            await self.auth.require(request)
