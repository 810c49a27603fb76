"""Chat API v1 and the Service API for tests: the GMS application on the memory or the Redis
stores (as with `--redis`), served on a loopback port, and a v1 customer's REST calls."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiocometd_ng import Client, ConnectionType
from aiocometd_ng.extensions import Extension
from aiohttp.test_utils import TestServer

from bayeux import BayeuxServer
from bayeux.app import BAYEUX_SERVER
from chat.app import CHAT_ENGINE, CHAT_V1_COMET, create_app
from chat.chat_v1_cometd import ChatV1Comet
from chat.config import ChatConfig
from chat.engine import ChatEngine
from chat.redis_store import RedisChatStore
from chat.storage import RedisStorage
from tests.conftest import fast_options
from tests.support.redis_server import RedisServer

Json = dict[str, Any]
ROOT = "/genesys/1/service"
STORES = ["memory", "redis"]
_prefixes = itertools.count()


@dataclass
class Reply:
    status: int
    body: Any


@dataclass
class V1Env:
    """The application, its chat engine and Bayeux server, and an HTTP client for it."""

    server: TestServer
    http: aiohttp.ClientSession
    chat: ChatEngine
    bayeux: BayeuxServer
    comet: ChatV1Comet

    @property
    def base(self) -> str:
        """`http://localhost:<port>` (aiocometd keeps cookies only for a host name)."""
        return f"http://localhost:{self.server.port}"

    async def post(
        self,
        path: str,
        form: Json | None = None,
        *,
        gms_user: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """POST to `path` (under the Service API root unless absolute): a form by default."""
        return await self.call("POST", path, form, gms_user, json, data, headers)

    async def get(self, path: str) -> Reply:
        return await self.call("GET", path)

    async def delete(self, path: str) -> Reply:
        return await self.call("DELETE", path)

    async def call(
        self,
        method: str,
        path: str,
        form: Json | None = None,
        gms_user: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        url = self.base + (path if path.startswith("/") else f"{ROOT}/{path}")
        all_headers = dict(headers or {})
        if gms_user is not None:
            all_headers["gms_user"] = gms_user
        body = data if data is not None else form
        async with self.http.request(
            method, url, data=body, json=json, headers=all_headers
        ) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            return Reply(response.status, _decode(text) if is_json else text)

    async def service(self, gms_user: str | None = None, **form: Any) -> str:
        """A new `request-chat` service session; its `_id`."""
        reply = await self.post("request-chat", form, gms_user=gms_user)
        assert reply.status == 200, reply
        service_id: str = reply.body["_id"]
        return service_id

    async def start_chat(
        self, gms_user: str | None = None, service: str = "request-chat", **form: Any
    ) -> tuple[str, str]:
        """(service id, chat id) of a new v1 chat of client Joan on that GMS service."""
        reply = await self.post(service, {}, gms_user=gms_user)
        assert reply.status == 200, reply
        service_id = reply.body["_id"]
        fields = {"userDisplayName": "Joan", "subject": "help", **form}
        reply = await self.post(f"{service_id}/ixn/chat", fields, gms_user=gms_user)
        assert reply.status == 200, reply
        return service_id, reply.body["chatSessionId"]


def _decode(text: str) -> Any:
    return orjson.loads(text) if text else None


@asynccontextmanager
async def v1_env(kind: str, redis_server: RedisServer, config: ChatConfig) -> AsyncIterator[V1Env]:
    """The application on `kind` stores (`memory` or `redis`), each Redis run in keys of its
    own."""
    store = services = None
    if kind == "redis":
        prefix = f"v1test{next(_prefixes)}"
        store = RedisChatStore(redis_server.url, prefix=prefix)
        services = RedisStorage(redis_server.url, prefix=prefix + "-service")
    app = create_app(fast_options(), config=config, store=store, services=services)
    server = TestServer(app, host="localhost")
    await server.start_server()
    http = aiohttp.ClientSession()
    try:
        yield V1Env(server, http, app[CHAT_ENGINE], app[BAYEUX_SERVER], app[CHAT_V1_COMET])
    finally:
        await http.close()
        await server.close()


class GmsClientExtension(Extension):
    """What a GMS mobile client adds to its CometD messages (aiocometd-ng): the `gms_user`
    header on every request, `ext.transcriptPosition` on its first `/meta/connect` when it
    resumes, and on `/meta/disconnect` when it goes to the background."""

    def __init__(self, gms_user: str, resume_from: int | None = None) -> None:
        self.gms_user = gms_user
        self.resume_from = resume_from
        self.leave_at: int | None = None

    async def outgoing(self, payload: list[Json], headers: dict[str, str]) -> None:
        headers["gms_user"] = self.gms_user
        for message in payload:
            channel = message.get("channel")
            if channel == "/meta/connect" and self.resume_from is not None:
                message.setdefault("ext", {})["transcriptPosition"] = str(self.resume_from)
                self.resume_from = None
            elif channel == "/meta/disconnect" and self.leave_at is not None:
                message.setdefault("ext", {})["transcriptPosition"] = str(self.leave_at)

    async def incoming(self, payload: list[Json], headers: dict[str, str] | None = None) -> None:
        return None


@asynccontextmanager
async def mobile_client(
    url: str, gms_user: str, resume_from: int | None = None
) -> AsyncIterator[tuple[Client, GmsClientExtension]]:
    """A long-polling aiocometd-ng client of `gms_user`, subscribed to `/_genesys`. Leaving
    the block closes it: a `/meta/disconnect`, with `extension.leave_at` when set."""
    extension = GmsClientExtension(gms_user, resume_from)
    client = Client(
        url,
        connection_types=[ConnectionType.LONG_POLLING],
        extensions=[extension],
        connection_timeout=5,
    )
    await client.open()
    try:
        await client.subscribe("/_genesys")
        yield client, extension
    finally:
        await client.close()


async def receive(client: Client, timeout: float = 5.0) -> Json:
    message: Json = await asyncio.wait_for(client.receive(), timeout)
    return message
