"""An agent desk for tests: an agent's own cookie jar (with its CSRF token), the agent REST
API and a CometD long-polling client at /api/v2/notifications; customers over Chat API v2
REST; and an application with agents configured."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from chat.app import create_app
from chat.config import ChatConfig
from chat.passwords import hash_password
from tests.conftest import WAIT, fast_options
from tests.support.chat_rest import ROOT

Json = dict[str, Any]
SERVICE = "customer-support"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
WAITING = "Please hold on, all agents are busy."


def config(sections: dict[str, dict[str, str]] | None = None, **routing: str) -> ChatConfig:
    """alice, bob and carol as agents, `[routing]` options, and any other `sections`."""
    agents = {name: hash_password(pw, iterations=1000) for name, pw in PASSWORDS.items()}
    routing_section = {"waiting_text": WAITING, **routing}
    return ChatConfig(sections={"agents": agents, "routing": routing_section, **(sections or {})})


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Server(Protocol):
    """Where a desk sends its requests: a test server, or a node run as a process."""

    def make_url(self, path: str) -> URL: ...


class ServerAt:
    """A server known by its base URL (`http://host:port`)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def make_url(self, path: str) -> URL:
        return URL(self.base_url + path)


class Agent:
    """An agent desktop: its own cookie jar, the REST API and a CometD long-polling client."""

    def __init__(self, server: Server, name: str, password: str | None = None) -> None:
        self.server = server
        self.name = name
        self.password = PASSWORDS.get(name, "") if password is None else password
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.client_id: str | None = None
        self.received: list[Json] = []
        self.csrf: str | None = None
        """The CSRF token the last authenticated GET answered, sent with every POST."""
        self._ids = 0

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def move_to(self, server: Server) -> None:
        """Talk to another node from now on, with the same cookies, CSRF token and CometD
        client id (as a load balancer sends a client elsewhere when its node goes)."""
        self.server = server

    async def close(self) -> None:
        await self.http.close()

    async def login(self) -> Json:
        headers = basic(self.name, self.password)
        async with self.http.get(self.url("/api/v2/me"), headers=headers) as response:
            body = await response.json()
            assert response.status == 200, body
            self.csrf = response.headers.get("X-CSRF-TOKEN")
            return dict(body)

    async def get(self, path: str) -> tuple[int, Json]:
        async with self.http.get(self.url(path)) as response:
            self.csrf = response.headers.get("X-CSRF-TOKEN", self.csrf)
            return response.status, dict(await response.json())

    def headers(self) -> dict[str, str]:
        return {"X-CSRF-TOKEN": self.csrf} if self.csrf else {}

    async def post(self, path: str, operation: str, **fields: Any) -> tuple[int, Json]:
        body = {"operationName": operation, **fields}
        async with self.http.post(self.url(path), json=body, headers=self.headers()) as response:
            return response.status, dict(await response.json())

    async def ok(self, path: str, operation: str, **fields: Any) -> None:
        status, body = await self.post(path, operation, **fields)
        assert (status, body) == (200, {"statusCode": 0}), (status, body)

    async def chat_op(self, chat_id: str, operation: str, **fields: Any) -> tuple[int, Json]:
        return await self.post(f"/api/v2/me/chats/{chat_id}", operation, **fields)

    async def state(self) -> str:
        """The agent's state on the chat channel, as `GET /api/v2/me` answers it."""
        status, me = await self.get("/api/v2/me")
        assert status == 200, me
        return str(me["user"]["channels"][0]["userState"]["state"])

    async def until_state(self, state: str) -> None:
        async def reached() -> bool:
            return await self.state() == state

        await eventually(reached)

    async def ready(self) -> None:
        """Log in, start a chat session, open CometD and go Ready."""
        await self.login()
        await self.ok("/api/v2/me", "StartContactCenterSession", channels=["chat"])
        await self.cometd()
        await self.ok("/api/v2/me/channels/chat", "Ready")

    # -- CometD ---------------------------------------------------------------------------
    async def bayeux(self, *messages: Json) -> list[Json]:
        batch = []
        for message in messages:
            self._ids += 1
            batch.append({"id": str(self._ids), **message})
            if self.client_id is not None:
                batch[-1]["clientId"] = self.client_id
        url = self.url("/api/v2/notifications")
        async with self.http.post(url, json=batch, headers=self.headers()) as response:
            assert response.status == 200
            replies: list[Json] = await response.json()
        for reply in replies:
            if reply.get("channel", "").startswith("/v2/me/"):
                self.received.append(reply)
        return replies

    async def cometd(self) -> None:
        (reply,) = await self.bayeux(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
            }
        )
        assert reply["successful"], reply
        self.client_id = reply["clientId"]
        (sub,) = await self.bayeux({"channel": "/meta/subscribe", "subscription": "/v2/me/*"})
        assert sub["successful"], sub

    async def disconnect(self) -> None:
        """End the CometD session (`/meta/disconnect`), as a desk closing does."""
        (reply,) = await self.bayeux({"channel": "/meta/disconnect"})
        assert reply["successful"], reply
        self.client_id = None

    async def connect(self) -> Json:
        """One `/meta/connect`; its reply (messages that came with it are in `received`)."""
        replies = await self.bayeux({"channel": "/meta/connect", "connectionType": "long-polling"})
        return next(r for r in replies if r.get("channel") == "/meta/connect")

    async def next(self, predicate: Callable[[Json], bool], timeout: float = WAIT) -> Json:
        """The first message received (earlier or by polling) whose data matches."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.received:
                    if predicate(message["data"]):
                        self.received.remove(message)
                        return dict(message["data"])
                await self.connect()

    async def invitation(self, timeout: float = WAIT) -> str:
        data = await self.next(lambda d: chat_state(d) == "Invited", timeout)
        return str(data["chat"]["id"])

    async def new_messages(self, chat_id: str) -> list[Json]:
        data = await self.next(
            lambda d: d.get("notificationType") == "NewMessages" and d["chat"]["id"] == chat_id
        )
        return list(data["messages"])

    async def client_message(self, chat_id: str) -> str:
        """The text of the next customer Message notified in this chat."""
        while True:
            for message in await self.new_messages(chat_id):
                if message["type"] == "Message" and message["from"]["type"] == "Client":
                    return str(message["text"])

    async def no_invitation(self, seconds: float) -> None:
        """No chat is offered for `seconds` (polling meanwhile)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            await self.connect()
            assert not [m for m in self.received if chat_state(m["data"]) == "Invited"]


def chat_state(data: Json) -> str | None:
    if data.get("messageType") != "ChatStateChangeMessage":
        return None
    if data.get("notificationType") != "StatusChange":
        return None
    return str(data["chat"]["state"])


class Customer:
    def __init__(self, http: TestClient[Any, Any], body: Json) -> None:
        self.http = http
        self.chat_id = str(body["chatId"])
        self.credentials = {
            "userId": body["userId"],
            "secureKey": body["secureKey"],
            "alias": body["alias"],
        }

    async def call(self, operation: str, **fields: str) -> Json:
        path = f"{ROOT}/{SERVICE}/{self.chat_id}/{operation}"
        async with self.http.post(path, data={**self.credentials, **fields}) as response:
            body: Json = await response.json(content_type=None)
            assert response.status == 200 and body["statusCode"] == 0, body
            return body

    async def events(self) -> list[tuple[str, str, str | None]]:
        body = await self.call("refresh", transcriptPosition="1")
        return [(m["type"], m["from"]["type"], m.get("text")) for m in body["messages"]]


class Env:
    def __init__(self, http: TestClient[Any, Any]) -> None:
        self.http = http
        self.agents: list[Agent] = []

    @property
    def server(self) -> Server:
        assert self.http.server is not None
        return self.http.server

    def agent(self, name: str, password: str | None = None) -> Agent:
        agent = Agent(self.server, name, password)
        self.agents.append(agent)
        return agent

    async def customer(self, nickname: str = "Carl") -> Customer:
        async with self.http.post(f"{ROOT}/{SERVICE}", data={"nickname": nickname}) as response:
            body = await response.json(content_type=None)
            assert body["statusCode"] == 0, body
            return Customer(self.http, body)

    async def accepted_chat(self, agent: Agent) -> Customer:
        """A customer's chat, offered to and accepted by `agent` (already Ready)."""
        customer = await self.customer()
        assert await agent.invitation() == customer.chat_id
        await agent.ok(f"/api/v2/me/chats/{customer.chat_id}", "Accept")
        await agent.next(lambda d: chat_state(d) == "Accepted")
        return customer


@asynccontextmanager
async def running(cfg: ChatConfig, **app_options: Any) -> AsyncIterator[Env]:
    """An application with `cfg` (and `create_app`'s other options), served over HTTP."""
    app = create_app(options=fast_options(), config=cfg, **app_options)
    async with TestClient(TestServer(app)) as http:
        env = Env(http)
        try:
            yield env
        finally:
            for agent in env.agents:
                await agent.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


@pytest.fixture(name="env")
async def agent_env() -> AsyncIterator[Env]:
    """`env`: the application with three agents (alice, bob, carol) and default routing;
    test modules use it with `from tests.support.agent_desk import agent_env`."""
    async with running(config()) as env:
        yield env
