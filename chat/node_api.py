"""GMS Node API: `/genesys/1/admin/node/status` and `.../changestatus/{status}` (Basic auth).

OFFLINE means "this node stops in a few seconds": the Bayeux server drains (its sessions are
handed over and their clients told to reconnect, which the load balancer sends to another
node because /health now answers 503). ONLINE takes the node back.
"""

from __future__ import annotations

from aiohttp import web

from bayeux import BayeuxServer

from .auth import BasicAuth

ONLINE = "ONLINE"
OFFLINE = "OFFLINE"


class NodeApi:
    def __init__(self, bayeux: BayeuxServer, auth: BasicAuth, protected: bool = True) -> None:
        self.bayeux = bayeux
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
        text = OFFLINE if self.bayeux.draining else ONLINE
        return web.Response(text=text, content_type="text/plain", charset="ISO-8859-1")

    async def change_status(self, request: web.Request) -> web.Response:
        await self._authenticate(request)
        wanted = request.match_info["status"].upper()
        if wanted == OFFLINE:
            await self.bayeux.drain()
        elif wanted == ONLINE:
            self.bayeux.resume()
        else:
            raise web.HTTPBadRequest(text="status must be ONLINE or OFFLINE")
        return web.Response(text="", content_type="text/plain")

    async def _authenticate(self, request: web.Request) -> None:
        if self.protected:
            await self.auth.require(request)
