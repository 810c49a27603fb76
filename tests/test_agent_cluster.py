"""The agent side across nodes: applications (as with `--redis`) share one real redis-server:
one queue per service, agents' states and offers, offer and logout timers, logins (cookie and
CSRF token), and agent notifications wherever the agent is connected. Nodes stop gracefully
(shutdown, or the Node API's OFFLINE) and die (SIGKILL, noticed through the heartbeats)."""

from __future__ import annotations

import asyncio
import configparser
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bayeux.redis_engine import RedisEngine
from chat.agent_api import AGENT_BAYEUX, ROUTER
from chat.agent_logins import RECHECK_S
from chat.config import ChatConfig, load_config
from chat.redis_store import RedisChatStore
from tests.conftest import TIMEOUT_MS
from tests.support.agent_desk import (
    WAITING,
    Agent,
    Env,
    Server,
    ServerAt,
    basic,
    chat_state,
    config,
    eventually,
    running,
)
from tests.support.processes import ServerProcess, bayeux_options
from tests.support.redis_server import RedisServer

_clusters = itertools.count()

HEARTBEAT_S = 0.1
NOTICED_S = 15.0
"""How long a test waits at most for a dead node to be noticed and its agents logged out."""
GMS_SERVER_PREFIXES = ("bayeux", "gms")
"""The Redis prefixes of `gms-server --redis`: its engines', its stores'."""


@pytest.fixture
async def make_cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield Cluster(redis_server, stack)


class Cluster:
    """Nodes built on demand, each with its own engine, chat store and HTTP server, all on
    one Redis under a prefix of their own; agents' desks that outlive any node."""

    def __init__(self, redis_server: RedisServer, stack: AsyncExitStack) -> None:
        self.url = redis_server.url
        self.stack = stack
        self.prefix = f"agents{next(_clusters)}"
        self._nodes: dict[Env, AsyncExitStack] = {}

    async def nodes(
        self, count: int = 2, sections: dict[str, dict[str, str]] | None = None, **routing: str
    ) -> list[Env]:
        return [
            await self.node(f"node{number}", config(sections, **routing)) for number in range(count)
        ]

    async def node(
        self,
        node_id: str,
        cfg: ChatConfig,
        prefixes: tuple[str, str] | None = None,
        node_timeout: float = 2.5,
    ) -> Env:
        """One node; `prefixes` (the engine's, the chat store's) are the cluster's own unless
        given; it takes a node silent for `node_timeout` seconds for dead."""
        engine_prefix, store_prefix = prefixes or (self.prefix, self.prefix)
        engine = RedisEngine(
            self.url, engine_prefix, node_id, heartbeat=HEARTBEAT_S, node_timeout=node_timeout
        )
        store = RedisChatStore(self.url, store_prefix)
        node = AsyncExitStack()
        self.stack.push_async_callback(node.aclose)
        env = await node.enter_async_context(running(cfg, engine=engine, store=store))
        self._nodes[env] = node
        return env

    async def stop(self, node: Env) -> None:
        """A graceful shutdown: the node's CometD sessions are handed over."""
        await self._nodes.pop(node).aclose()

    def desk(self, server: Server, name: str) -> Agent:
        agent = Agent(server, name)
        self.stack.push_async_callback(agent.close)
        return agent


async def test_an_offer_goes_to_exactly_one_agent_within_capacity(make_cluster: Cluster) -> None:
    one, two = await make_cluster.nodes(max_chats="2")
    alice, bob = one.agent("alice"), two.agent("bob")
    await alice.ready()
    await bob.ready()
    # Customers arrive on both nodes at once: both nodes dispatch concurrently.
    arriving = [node.customer(f"c{i}") for i, node in enumerate([one, two, one, two])]
    customers = await asyncio.gather(*arriving)
    offers: dict[str, list[str]] = {}
    for agent in (alice, bob):
        for _ in range(2):
            offers.setdefault(await agent.invitation(), []).append(agent.name)
    assert sorted(offers) == sorted(c.chat_id for c in customers)
    assert all(len(names) == 1 for names in offers.values())  # nobody got one twice

    late = await one.customer("late")  # both agents are full now

    async def told() -> bool:
        return ("Message", "External", WAITING) in await late.events()

    for agent in (alice, bob):
        await agent.no_invitation(0.2)
    assert await told()
    _, listed = await bob.get("/api/v2/agents")
    states = {a["userName"]: (a["state"], a["available"]) for a in listed["agents"]}
    assert states["alice"] == ("Ready", False)  # seen from the other node


async def test_a_chat_from_one_node_is_worked_by_an_agent_on_the_other(
    make_cluster: Cluster,
) -> None:
    one, two = await make_cluster.nodes()
    bob = two.agent("bob")
    await bob.ready()
    customer = await one.customer()
    assert await bob.invitation() == customer.chat_id
    await bob.ok(f"/api/v2/me/chats/{customer.chat_id}", "Accept")
    await bob.next(lambda d: chat_state(d) == "Accepted")
    await bob.ok(f"/api/v2/me/chats/{customer.chat_id}", "SendMessage", text="Hello")
    assert ("Message", "Agent", "Hello") in await customer.events()
    await customer.call("send", message="hi bob")  # committed on node one
    assert await bob.client_message(customer.chat_id) == "hi bob"


async def test_transfer_and_logout_timeout_across_nodes(make_cluster: Cluster) -> None:
    one, two = await make_cluster.nodes(logout_timeout_s="0.3")
    alice, bob = one.agent("alice"), two.agent("bob")
    await alice.ready()
    customer = await one.accepted_chat(alice)
    await bob.ready()

    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Transfer", agent="bob")
    assert await bob.invitation() == customer.chat_id
    await bob.ok(f"/api/v2/me/chats/{customer.chat_id}", "Accept")
    await bob.next(lambda d: chat_state(d) == "Accepted")

    # bob's CometD session goes; the timer is claimed by whichever node, and alice (on the
    # other node) gets the chat back.
    await bob.disconnect()
    assert await alice.invitation() == customer.chat_id
    assert await bob.state() == "LoggedOut"


async def test_events_follow_a_chat_transferred_on_the_other_node(make_cluster: Cluster) -> None:
    """Nodes read a chat's route afresh for every operation and event: once alice's chat
    has gone to bob through node two, node one refuses alice's operations and delivers the
    chat's events to bob, though node one delivered them to alice just before."""
    one, two = await make_cluster.nodes()
    alice, bob = one.agent("alice"), two.agent("bob")
    await alice.ready()
    customer = await one.accepted_chat(alice)
    chat = customer.chat_id
    await alice.ok(f"/api/v2/me/chats/{chat}", "SendMessage", text="alice here")
    while not [m for m in await alice.new_messages(chat) if m.get("text") == "alice here"]:
        pass  # (her ParticipantJoined comes first)
    await customer.call("send", message="hi alice")  # on node one
    assert await alice.client_message(chat) == "hi alice"

    await bob.ready()
    alice.move_to(two.server)
    await alice.ok(f"/api/v2/me/chats/{chat}", "Transfer", agent="bob")
    assert await bob.invitation() == chat
    await bob.ok(f"/api/v2/me/chats/{chat}", "Accept")
    await bob.next(lambda d: chat_state(d) == "Accepted")

    alice.move_to(one.server)
    status, body = await alice.chat_op(chat, "SendMessage", text="still me?")
    assert (status, body["statusCode"]) == (404, 6)
    await customer.call("send", message="hi bob")  # on node one, which served alice
    assert await bob.client_message(chat) == "hi bob"
    await bob.ok(f"/api/v2/me/chats/{chat}", "SendMessage", text="bob here")
    assert ("Message", "Agent", "bob here") in await customer.events()
    await alice.connect()
    texts = [
        message.get("text")
        for received in alice.received
        if received["data"].get("notificationType") == "NewMessages"
        for message in received["data"]["messages"]
    ]
    assert "hi bob" not in texts and "bob here" not in texts


# -- logins ------------------------------------------------------------------------------


LOGIN_TIMEOUT = {"agent-api": {"session_timeout_s": "0.6"}}


async def logins_last_while_used(one: Env, two: Env) -> None:
    """alice logs in on `one`; her cookie and CSRF token work on `two` too, for as long as
    they are used, and no longer once idle for the session timeout (0.6 s)."""
    alice = one.agent("alice")
    await alice.login()
    token = alice.csrf
    alice.move_to(two.server)
    for _ in range(4):  # 0.8 s in all: each use pushes the expiry back
        await asyncio.sleep(0.2)
        assert await alice.state() == "LoggedOut"  # (the cookie works: not 401)
        assert alice.csrf == token
    await alice.ok("/api/v2/me", "StartContactCenterSession", channels=["chat"])
    await asyncio.sleep(0.8)
    for node in (one, two):
        alice.move_to(node.server)
        status, body = await alice.get("/api/v2/me")
        assert (status, body["statusCode"]) == (401, 20)


async def test_a_login_lasts_while_it_is_used() -> None:
    async with running(config(LOGIN_TIMEOUT)) as env:
        await logins_last_while_used(env, env)


async def test_a_login_works_on_every_node_while_it_is_used(make_cluster: Cluster) -> None:
    one, two = await make_cluster.nodes(sections=LOGIN_TIMEOUT)
    await logins_last_while_used(one, two)


async def test_logging_out_on_one_node_ends_the_login_on_every_node(
    make_cluster: Cluster,
) -> None:
    one, two = await make_cluster.nodes()
    alice, again = one.agent("alice"), one.agent("alice")  # two logins (two browsers)
    await alice.login()
    await again.login()
    alice.move_to(two.server)
    await alice.ok("/api/v2/me", "EndContactCenterSession")
    for agent in (alice, again):
        for node in (one, two):
            agent.move_to(node.server)
            status, _ = await agent.get("/api/v2/me")
            assert status == 401
    assert await again.post("/api/v2/me", "Dance") == (
        401,
        {"statusCode": 20, "statusMessage": "Not authenticated"},
    )


async def test_a_node_that_just_checked_a_login_learns_of_its_logout_within_a_second(
    make_cluster: Cluster,
) -> None:
    """A node trusts a login it has just confirmed for RECHECK_S (no Redis call per request
    of a busy desk); a logout on another node reaches it within that time."""
    one, two = await make_cluster.nodes()
    alice = one.agent("alice")
    await alice.login()
    assert (await alice.get("/api/v2/me"))[0] == 200
    alice.move_to(two.server)
    await alice.ok("/api/v2/me", "EndContactCenterSession")
    alice.move_to(one.server)
    started = time.monotonic()
    while (await alice.get("/api/v2/me"))[0] != 401:
        assert time.monotonic() - started < RECHECK_S + 0.5
        await asyncio.sleep(0.05)


# -- nodes that stop or die ------------------------------------------------------------------


async def sessions_of(node: Env, name: str) -> dict[str, int]:
    """The agent's CometD sessions per node, as routing counts them."""
    assert node.http.app is not None
    return (await node.http.app[ROUTER].agent(name)).sessions


async def counted(node: Env, name: str, sessions: dict[str, int]) -> None:
    async def now() -> bool:
        return await sessions_of(node, name) == sessions

    await eventually(now, timeout=NOTICED_S)


def connect_held(node: Env, agent: Agent) -> bool:
    assert node.http.app is not None and agent.client_id is not None
    session = node.http.app[AGENT_BAYEUX].sessions.get(agent.client_id)
    return session is not None and session.held is not None


@pytest.mark.parametrize("how", ["shutdown", "offline"])
async def test_an_agent_handed_over_by_a_stopping_node_carries_on(
    make_cluster: Cluster, how: str
) -> None:
    auth = {"auth": {"node": "false"}}
    one, two = await make_cluster.nodes(sections=auth, logout_timeout_s="0.5")
    alice = make_cluster.desk(one.server, "alice")
    await alice.ready()
    customer = await two.accepted_chat(alice)  # the customer is on the node that stays
    await counted(two, "alice", {"node0": 1})

    held = asyncio.create_task(alice.connect())

    async def holding() -> bool:
        return connect_held(one, alice)

    await eventually(holding)
    if how == "shutdown":
        await make_cluster.stop(one)
    else:
        async with one.http.post("/genesys/1/admin/node/changestatus/OFFLINE") as response:
            assert response.status == 200
    reply = await held
    assert reply["successful"] and reply["advice"]["reconnect"] == "retry"

    alice.move_to(two.server)  # where the load balancer sends her now
    assert (await alice.connect())["successful"]  # the same CometD session, adopted
    await counted(two, "alice", {"node1": 1})
    await asyncio.sleep(0.7)  # past the logout timeout
    assert await alice.state() == "Ready"
    await customer.call("send", message="still there?")
    assert await alice.client_message(customer.chat_id) == "still there?"
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "SendMessage", text="yes")
    assert ("Message", "Agent", "yes") in await customer.events()


def write_ini(cfg: ChatConfig, path: Path) -> Path:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep option case
    parser.read_dict(cfg.sections)
    with path.open("w", encoding="utf-8") as handle:
        parser.write(handle)
    return path


async def test_agents_of_a_killed_node_carry_on_elsewhere_or_are_logged_out(
    make_cluster: Cluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Node A (a `gms-server` process) is SIGKILLed; node B notices through the heartbeats.
    alice's desk goes on on B with the same cookie and CSRF token; bob's never comes back,
    so he is logged out and his chat goes to carol."""
    ini = write_ini(config(max_chats="1", logout_timeout_s="0.5"), tmp_path / "gms.ini")
    process = ServerProcess(
        "chat",
        [
            *("--redis", redis_server.url, "--node-id", "node-a", "--config", str(ini)),
            *bayeux_options({"timeout": TIMEOUT_MS}),
        ],
    )
    make_cluster.stack.callback(process.close)
    await asyncio.to_thread(process.start)
    # A beats every second; 4 s of silence leaves room for a loaded machine's pauses.
    b = await make_cluster.node("node-b", load_config(ini), GMS_SERVER_PREFIXES, node_timeout=4)
    assert b.http.app is not None
    node_a = ServerAt(process.base_url)
    alice, bob = make_cluster.desk(node_a, "alice"), make_cluster.desk(node_a, "bob")
    carol = b.agent("carol")
    await alice.ready()
    await bob.ready()
    first, second = await b.accepted_chat(alice), await b.accepted_chat(bob)
    await carol.ready()
    await counted(b, "alice", {"node-a": 1})
    token = alice.csrf

    process.kill()
    alice.move_to(b.server)
    assert await alice.state() == "Ready"  # her login is in Redis
    assert alice.csrf == token
    assert (await alice.connect())["error"] == "402::session_unknown"
    await alice.cometd()  # a new CometD session, with the same cookie and token
    await alice.ok(f"/api/v2/me/chats/{first.chat_id}", "SendMessage", text="I am back")
    assert ("Message", "Agent", "I am back") in await first.events()

    assert await carol.invitation(timeout=NOTICED_S) == second.chat_id
    await counted(b, "alice", {"node-b": 1})  # node A's count went with it
    bob.move_to(b.server)
    assert await bob.state() == "LoggedOut"
    await first.call("send", message="welcome back")
    assert await alice.client_message(first.chat_id) == "welcome back"


async def test_without_redis_logins_answer_503_and_come_back_with_it(
    make_cluster: Cluster, redis_server: RedisServer
) -> None:
    """(Last in the module: it restarts the module's Redis, which forgets everything.)"""
    (one,) = await make_cluster.nodes(count=1)
    alice = one.agent("alice")
    await alice.login()
    redis_server.stop()
    try:
        status, body = await alice.get("/api/v2/me")
        assert (status, body["statusCode"]) == (503, 4)
        handshake = [{"channel": "/meta/handshake", "version": "1.0"}]
        url = alice.url("/api/v2/notifications")
        async with alice.http.post(url, json=handshake, headers=alice.headers()) as response:
            assert response.status == 503
    finally:
        redis_server.start()

    async def answered() -> bool:
        status, _ = await alice.get("/api/v2/me")
        return status == 401  # not 503 any more; the login went with Redis's data

    async def logs_in() -> bool:  # each pooled connection Redis dropped fails once
        async with alice.http.get(
            alice.url("/api/v2/me"), headers=basic("alice", "alice-pw")
        ) as response:
            return response.status == 200

    await eventually(answered, timeout=10)
    await eventually(logs_in, timeout=10)
