"""The agent API (GWS style: `/api/v2/me...` and CometD at `/api/v2/notifications`) and
chat routing: customers over Chat API v2 REST, agents over HTTP with their own cookie jars
and CometD long-polling."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer

from chat import cli
from chat.agent_api import ROUTER
from chat.agents import RoutingSettings, agent_credentials, hash_cli_agents
from chat.app import create_app
from chat.config import ChatConfig
from chat.passwords import hash_password
from tests.conftest import WAIT, fast_options
from tests.support.chat_rest import ROOT

Json = dict[str, Any]
SERVICE = "customer-support"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
WAITING = "Please hold on, all agents are busy."


def config(**routing: str) -> ChatConfig:
    agents = {name: hash_password(pw, iterations=1000) for name, pw in PASSWORDS.items()}
    return ChatConfig(sections={"agents": agents, "routing": {"waiting_text": WAITING, **routing}})


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Agent:
    """An agent desktop: its own cookie jar, the REST API and a CometD long-polling client."""

    def __init__(self, server: BaseTestServer, name: str, password: str | None = None) -> None:
        self.server = server
        self.name = name
        self.password = PASSWORDS.get(name, "") if password is None else password
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.client_id: str | None = None
        self.received: list[Json] = []
        self._ids = 0

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def close(self) -> None:
        await self.http.close()

    async def login(self) -> Json:
        headers = basic(self.name, self.password)
        async with self.http.get(self.url("/api/v2/me"), headers=headers) as response:
            body = await response.json()
            assert response.status == 200, body
            return dict(body)

    async def get(self, path: str) -> tuple[int, Json]:
        async with self.http.get(self.url(path)) as response:
            return response.status, dict(await response.json())

    async def post(self, path: str, operation: str, **fields: Any) -> tuple[int, Json]:
        body = {"operationName": operation, **fields}
        async with self.http.post(self.url(path), json=body) as response:
            return response.status, dict(await response.json())

    async def ok(self, path: str, operation: str, **fields: Any) -> None:
        status, body = await self.post(path, operation, **fields)
        assert (status, body) == (200, {"statusCode": 0}), (status, body)

    async def chat_op(self, chat_id: str, operation: str, **fields: Any) -> tuple[int, Json]:
        return await self.post(f"/api/v2/me/chats/{chat_id}", operation, **fields)

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
        async with self.http.post(self.url("/api/v2/notifications"), json=batch) as response:
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

    async def next(self, predicate: Callable[[Json], bool], timeout: float = WAIT) -> Json:
        """The first message received (earlier or by polling) whose data matches."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.received:
                    if predicate(message["data"]):
                        self.received.remove(message)
                        return dict(message["data"])
                await self.bayeux({"channel": "/meta/connect", "connectionType": "long-polling"})

    async def invitation(self, timeout: float = WAIT) -> str:
        data = await self.next(lambda d: chat_state(d) == "Invited", timeout)
        return str(data["chat"]["id"])

    async def new_messages(self, chat_id: str) -> list[Json]:
        data = await self.next(
            lambda d: d.get("notificationType") == "NewMessages" and d["chat"]["id"] == chat_id
        )
        return list(data["messages"])

    async def no_invitation(self, seconds: float) -> None:
        """No chat is offered for `seconds` (polling meanwhile)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            await self.bayeux({"channel": "/meta/connect", "connectionType": "long-polling"})
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

    def agent(self, name: str, password: str | None = None) -> Agent:
        assert self.http.server is not None
        agent = Agent(self.http.server, name, password)
        self.agents.append(agent)
        return agent

    async def customer(self, nickname: str = "Carl") -> Customer:
        async with self.http.post(f"{ROOT}/{SERVICE}", data={"nickname": nickname}) as response:
            body = await response.json(content_type=None)
            assert body["statusCode"] == 0, body
            return Customer(self.http, body)


@asynccontextmanager
async def running(cfg: ChatConfig) -> AsyncIterator[Env]:
    app = create_app(options=fast_options(), config=cfg)
    async with TestClient(TestServer(app)) as http:
        env = Env(http)
        try:
            yield env
        finally:
            for agent in env.agents:
                await agent.close()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running(config()) as env:
        yield env


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


# -- accounts and sessions -------------------------------------------------------------------


async def test_login_answers_the_agent_and_sets_a_session_cookie(env: Env) -> None:
    alice = env.agent("alice")
    body = await alice.login()
    assert body["statusCode"] == 0
    assert body["user"]["userName"] == "alice"
    assert body["user"]["channels"] == [{"channel": "chat", "userState": {"state": "LoggedOut"}}]
    # The cookie alone authenticates from now on.
    status, again = await alice.get("/api/v2/me")
    assert status == 200 and again["user"]["id"] == "alice"


async def test_a_bad_password_or_no_credentials_is_401(env: Env) -> None:
    mallory = env.agent("alice", password="wrong")
    headers = basic("alice", "wrong")
    async with mallory.http.get(mallory.url("/api/v2/me"), headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert await response.json() == {"statusCode": 20, "statusMessage": "Not authenticated"}
    assert "JSESSIONID" not in {c.key for c in mallory.http.cookie_jar}
    status, _ = await mallory.post("/api/v2/me", "StartContactCenterSession", channels=["chat"])
    assert status == 401
    unknown = env.agent("nobody", password="x")
    async with unknown.http.get(
        unknown.url("/api/v2/me"), headers=basic("nobody", "x")
    ) as response:
        assert response.status == 401


async def test_cometd_handshake_needs_an_agent_session(env: Env) -> None:
    stranger = env.agent("alice")
    (reply,) = await stranger.bayeux(
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        }
    )
    assert reply["successful"] is False


async def test_start_session_and_ready_are_announced_on_v2_me_channels(env: Env) -> None:
    alice = env.agent("alice")
    await alice.login()
    await alice.cometd()
    status, body = await alice.post("/api/v2/me/channels/chat", "Ready")
    assert (status, body["statusCode"]) == (400, 2)  # no contact center session yet
    await alice.ok("/api/v2/me", "StartContactCenterSession", channels=["chat"])
    await alice.ok("/api/v2/me/channels/chat", "Ready")
    states = []
    for _ in range(2):
        data = await alice.next(lambda d: d.get("messageType") == "ChannelStateChangeMessage")
        states.append(data["channels"][0]["userState"]["state"])
    assert states == ["NotReady", "Ready"]
    _, me = await alice.get("/api/v2/me")
    assert me["user"]["channels"][0]["userState"]["state"] == "Ready"


async def test_operations_are_checked(env: Env) -> None:
    alice = env.agent("alice")
    await alice.login()
    status, body = await alice.post("/api/v2/me", "Dance")
    assert status == 400 and body["statusCode"] == 10 and "Dance" in body["statusMessage"]
    async with alice.http.post(alice.url("/api/v2/me"), data="{nope") as response:
        assert response.status == 400 and (await response.json())["statusCode"] == 10
    async with alice.http.post(alice.url("/api/v2/me"), json={}) as response:
        assert response.status == 400 and (await response.json())["statusCode"] == 1
    form = {"operationName": "StartContactCenterSession"}
    async with alice.http.post(alice.url("/api/v2/me"), data=form) as response:
        assert response.status == 400 and (await response.json())["statusCode"] == 10


async def test_cometd_subscriptions_are_limited_to_v2_me_and_publishing_is_refused(
    env: Env,
) -> None:
    alice = env.agent("alice")
    await alice.login()
    await alice.cometd()
    (sub,) = await alice.bayeux({"channel": "/meta/subscribe", "subscription": "/other/**"})
    assert sub["successful"] is False
    (pub,) = await alice.bayeux({"channel": "/v2/me/chats", "data": {"forged": True}})
    assert pub["successful"] is False


# -- the whole chat ---------------------------------------------------------------------------


async def test_a_chat_from_request_to_complete(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer("Carl")

    chat_id = await alice.invitation()
    assert chat_id == customer.chat_id
    _, listed = await alice.get("/api/v2/me/chats")
    assert [(c["id"], c["state"]) for c in listed["chats"]] == [(chat_id, "Invited")]
    assert listed["chats"][0]["capabilities"] == ["Accept", "Reject"]
    status, body = await alice.chat_op(chat_id, "SendMessage", text="too early")
    assert (status, body["statusCode"]) == (400, 2)

    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    accepted = await alice.next(lambda d: chat_state(d) == "Accepted")
    assert [p["type"] for p in accepted["chat"]["participants"]] == ["Client", "Agent"]
    assert ("ParticipantJoined", "Agent", None) in await customer.events()

    await alice.ok(f"/api/v2/me/chats/{chat_id}", "StartTyping")
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "SendMessage", text="Hello Carl")
    assert ("Message", "Agent", "Hello Carl") in await customer.events()

    await customer.call("send", message="Hi, I need help")
    while True:
        messages = await alice.new_messages(chat_id)
        if any(m["type"] == "Message" and m["from"]["type"] == "Client" for m in messages):
            break
    assert messages[-1]["text"] == "Hi, I need help"

    status, detail = await alice.get(f"/api/v2/me/chats/{chat_id}")
    assert status == 200 and detail["chat"]["state"] == "Accepted"
    texts = [m.get("text") for m in detail["chat"]["messages"] if m["type"] == "Message"]
    assert texts == ["Hello Carl", "Hi, I need help"]

    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Complete")
    await alice.next(lambda d: chat_state(d) == "Completed")
    body = await customer.call("refresh")
    assert body["chatEnded"] is True
    _, listed = await alice.get("/api/v2/me/chats")
    assert listed["chats"] == []


async def test_leave_by_the_only_agent_ends_the_chat(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer()
    chat_id = await alice.invitation()
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Leave")
    await alice.next(lambda d: chat_state(d) == "Completed")
    assert (await customer.call("refresh"))["chatEnded"] is True


async def test_a_customer_leaving_revokes_the_offer(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer()
    chat_id = await alice.invitation()
    await customer.call("disconnect")
    revoked = await alice.next(lambda d: chat_state(d) == "Revoked")
    assert revoked["chat"]["id"] == chat_id
    status, _ = await alice.chat_op(chat_id, "Accept")
    assert status == 404


# -- routing ----------------------------------------------------------------------------------


async def test_reject_offers_the_chat_to_the_next_agent(env: Env) -> None:
    alice, bob = env.agent("alice"), env.agent("bob")
    await alice.ready()
    await bob.ready()  # alice has been idle longer: she gets the first offer
    customer = await env.customer()
    assert await alice.invitation() == customer.chat_id
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Reject")
    await alice.next(lambda d: chat_state(d) == "Revoked")
    assert await bob.invitation() == customer.chat_id
    status, _ = await alice.get(f"/api/v2/me/chats/{customer.chat_id}")
    assert status == 404


async def test_an_unanswered_offer_times_out_and_goes_to_the_next_agent() -> None:
    async with running(config(offer_timeout_s="0.3")) as env:
        alice, bob = env.agent("alice"), env.agent("bob")
        await alice.ready()
        await bob.ready()
        customer = await env.customer()
        assert await alice.invitation() == customer.chat_id
        await alice.next(lambda d: chat_state(d) == "Revoked")
        assert await bob.invitation() == customer.chat_id
        status, _ = await alice.chat_op(customer.chat_id, "Accept")
        assert status == 404


async def test_without_a_ready_agent_the_chat_waits_with_a_message(env: Env) -> None:
    customer = await env.customer()

    async def told() -> bool:
        return ("Message", "External", WAITING) in await customer.events()

    await eventually(told)
    alice = env.agent("alice")
    await alice.ready()  # the queued chat goes to the first agent to become Ready
    assert await alice.invitation() == customer.chat_id
    events = await customer.events()
    assert events.count(("Message", "External", WAITING)) == 1


async def test_not_ready_agents_get_no_offers(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    await alice.ok("/api/v2/me/channels/chat", "NotReady")
    customer = await env.customer()

    async def told() -> bool:
        return ("Message", "External", WAITING) in await customer.events()

    await eventually(told)
    await alice.no_invitation(0.3)


async def test_capacity_is_respected() -> None:
    async with running(config(max_chats="2")) as env:
        alice = env.agent("alice")
        await alice.ready()
        first, second, third = [await env.customer(f"c{i}") for i in range(3)]
        offered = {await alice.invitation(), await alice.invitation()}
        assert offered == {first.chat_id, second.chat_id}
        for chat_id in offered:
            await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")

        async def told() -> bool:
            return ("Message", "External", WAITING) in await third.events()

        await eventually(told)
        assert await alice.next(lambda d: chat_state(d) == "Accepted")
        assert await alice.next(lambda d: chat_state(d) == "Accepted")
        await alice.no_invitation(0.3)
        # Completing one frees a slot: the waiting chat is offered.
        await alice.ok(f"/api/v2/me/chats/{first.chat_id}", "Complete")
        assert await alice.invitation() == third.chat_id


async def test_an_agent_cannot_read_or_work_another_agents_chat(env: Env) -> None:
    alice, bob = env.agent("alice"), env.agent("bob")
    await alice.ready()
    await bob.login()
    customer = await env.customer()
    chat_id = await alice.invitation()
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    for operation in ("Accept", "SendMessage", "Complete"):
        status, body = await bob.chat_op(chat_id, operation, text="hijack")
        assert status == 404 and body == {"statusCode": 6, "statusMessage": "Chat not found"}
    status, body = await bob.get(f"/api/v2/me/chats/{chat_id}")
    assert status == 404
    _, listed = await bob.get("/api/v2/me/chats")
    assert listed["chats"] == []
    assert ("Message", "Agent", "hijack") not in await customer.events()


async def test_end_session_logs_out_and_drops_the_cookie(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    await alice.ok("/api/v2/me", "EndContactCenterSession")
    status, _ = await alice.get("/api/v2/me")
    assert status == 401
    (connect,) = await alice.bayeux({"channel": "/meta/connect", "connectionType": "long-polling"})
    assert connect["successful"] is False  # its CometD session ended too
    await alice.login()
    _, me = await alice.get("/api/v2/me")
    assert me["user"]["channels"][0]["userState"]["state"] == "LoggedOut"


async def test_end_session_is_refused_while_the_agent_has_chats(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    await env.customer()
    chat_id = await alice.invitation()
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    status, body = await alice.post("/api/v2/me", "EndContactCenterSession")
    assert (status, body["statusCode"]) == (400, 2)


# -- configuration ----------------------------------------------------------------------------


async def test_no_agent_exists_unless_configured() -> None:
    async with running(ChatConfig()) as env:
        alice = env.agent("alice")
        async with alice.http.get(
            alice.url("/api/v2/me"), headers=basic("alice", "alice-pw")
        ) as response:
            assert response.status == 401
        assert env.http.app is not None and env.http.app[ROUTER].agents == {}
        customer = await env.customer()
        await asyncio.sleep(0.1)
        assert await customer.events() == [("ParticipantJoined", "Client", None)]


def test_agent_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match=r"\[agents\] alice"):
        agent_credentials({"agents": {"alice": "clear-text-password"}})
    with pytest.raises(ValueError, match="max_chats"):
        RoutingSettings.from_sections({"routing": {"max_chats": "0"}})
    with pytest.raises(ValueError, match="unknown option"):
        RoutingSettings.from_sections({"routing": {"max_chat": "2"}})
    with pytest.raises(ValueError, match="USER:PASSWORD") as raised:
        hash_cli_agents(["alice"])
    assert "alice" not in str(raised.value).replace("--agent", "")


def test_cli_agents_are_hashed_and_win_over_the_config() -> None:
    hashes = hash_cli_agents(["dave:pa:ss"])
    assert set(hashes) == {"dave"} and hashes["dave"].startswith("pbkdf2_sha256$")
    assert "pa:ss" not in hashes["dave"]
    merged = agent_credentials({"agents": {"dave": hash_password("old", 1000)}}, hashes)
    assert merged["dave"] == hashes["dave"]


async def test_the_only_agent_rejecting_gets_the_chat_offered_again(env: Env) -> None:
    """Agents who declined come last, but when nobody else is free they are asked again."""
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer()
    assert await alice.invitation() == customer.chat_id
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Reject")
    assert await alice.invitation() == customer.chat_id


def test_cli_refuses_a_malformed_agent_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("alice", "alice:", ":secret"):
        with pytest.raises(SystemExit):
            cli.main(["--agent", flag])
        error = capsys.readouterr().err
        assert "--agent: expected USER:PASSWORD" in error and "secret" not in error
