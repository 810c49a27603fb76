"""Agent routing across nodes: two applications (as with `--redis`) share one real
redis-server: one queue per service, agents' states and offers, offer and logout timers,
and agent notifications wherever the agent is connected."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from bayeux.redis_engine import RedisEngine
from chat.agent_api import ROUTER
from chat.redis_store import RedisChatStore
from tests.support.agent_desk import (
    WAITING,
    Agent,
    Env,
    chat_state,
    config,
    eventually,
    running,
)
from tests.support.redis_server import RedisServer

_clusters = itertools.count()


@pytest.fixture
async def make_cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield Cluster(redis_server, stack)


class Cluster:
    """Nodes built on demand, each with its own engine, chat store and HTTP server, all on
    one Redis under a prefix of their own."""

    def __init__(self, redis_server: RedisServer, stack: AsyncExitStack) -> None:
        self.url = redis_server.url
        self.stack = stack
        self.prefix = f"agents{next(_clusters)}"

    async def nodes(self, count: int = 2, **routing: str) -> list[Env]:
        nodes = []
        for number in range(count):
            engine = RedisEngine(self.url, self.prefix, f"node{number}")
            store = RedisChatStore(self.url, self.prefix)
            env = running(config(**routing), engine=engine, store=store)
            nodes.append(await self.stack.enter_async_context(env))
        return nodes


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
    customer = await one.customer()
    assert await alice.invitation() == customer.chat_id
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Accept")
    await bob.ready()

    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Transfer", agent="bob")
    assert await bob.invitation() == customer.chat_id
    await bob.ok(f"/api/v2/me/chats/{customer.chat_id}", "Accept")
    await bob.next(lambda d: chat_state(d) == "Accepted")

    # bob's CometD session goes; the timer is claimed by whichever node, and alice (on the
    # other node) gets the chat back.
    await leave_cometd(bob)
    assert await alice.invitation() == customer.chat_id
    _, me = await bob.get("/api/v2/me")
    assert me["user"]["channels"][0]["userState"]["state"] == "LoggedOut"


async def leave_cometd(agent: Agent) -> None:
    (reply,) = await agent.bayeux({"channel": "/meta/disconnect"})
    assert reply["successful"], reply


async def test_a_lost_node_takes_its_agents_sessions_with_it(make_cluster: Cluster) -> None:
    one, two = await make_cluster.nodes(logout_timeout_s="0.2")
    alice = one.agent("alice")
    await alice.ready()
    assert two.http.app is not None
    # What the survivor that removes a silent node from the registry is told.
    two.http.app[ROUTER].node_lost("node0")

    async def logged_out() -> bool:
        _, me = await alice.get("/api/v2/me")
        return bool(me["user"]["channels"][0]["userState"]["state"] == "LoggedOut")

    await eventually(logged_out)
