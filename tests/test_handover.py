"""A node shutting down hands its sessions to Redis; another node (or the same one, restarted)
adopts each session when its client reconnects: no re-handshake, nothing queued is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bayeux import AckExtension, BayeuxServer
from bayeux.redis_engine import RedisEngine
from tests.conftest import PipelineClient, Started, connected_client, fast_options
from tests.support.redis_server import RedisServer

NodeFactory = Callable[[], Awaitable[BayeuxServer]]


@pytest.fixture
async def make_node(redis_server: RedisServer) -> AsyncIterator[NodeFactory]:
    async def make() -> BayeuxServer:
        engine = RedisEngine(redis_server.url, node_id=f"node{len(nodes.items)}")
        server = BayeuxServer(fast_options(), engine=engine)
        server.add_extension(AckExtension())
        await server.start()
        return server

    async with Started(make, BayeuxServer.close) as nodes:
        yield nodes


def move(client: PipelineClient, node: BayeuxServer) -> PipelineClient:
    """The same client (id and browser cookie), now talking to another node."""
    client.server = node
    return client


async def test_held_connects_are_told_to_retry_not_to_handshake(make_node: NodeFactory) -> None:
    old = await make_node()
    client = await connected_client(old)
    held = await client.start_connect()
    await old.close()
    _, reply = await client.finish(held)
    assert reply["successful"] is True
    assert reply["advice"]["reconnect"] == "retry"


async def test_an_adopted_session_keeps_its_subscriptions_and_queued_messages(
    make_node: NodeFactory,
) -> None:
    old, new = await make_node(), await make_node()
    client = await connected_client(old)
    assert (await client.subscribe(["/news", "/alerts/*"]))["successful"] is True
    await client.publish("/news", "queued before shutdown")
    await old.close()
    moved = move(client, new)
    assert await moved.poll() == [{"channel": "/news", "data": "queued before shutdown"}]
    publisher = await connected_client(new)
    await publisher.publish("/alerts/fire", "after")
    assert await moved.poll() == [{"channel": "/alerts/fire", "data": "after"}]
    assert new.sessions[client.client_id or ""].subscriptions == {"/news", "/alerts/*"}


async def test_unacknowledged_messages_survive_a_restart(make_node: NodeFactory) -> None:
    old = await make_node()
    client = await connected_client(old, ext={"ack": True})
    await client.subscribe("/orders")
    await client.publish("/orders", 1)
    await client.publish("/orders", 2)
    deliveries, reply = await client.connect(ext={"ack": 0})
    assert [d["data"] for d in deliveries] == [1, 2]
    sent_batch = reply["ext"]["ack"]
    await old.close()  # the client never acknowledged batch `sent_batch`
    restarted = await make_node()
    moved = move(client, restarted)
    deliveries, reply = await moved.connect(ext={"ack": sent_batch - 1}, advice={"timeout": 0})
    assert [d["data"] for d in deliveries] == [1, 2]
    assert reply["ext"]["ack"] > sent_batch
    deliveries, _ = await moved.connect(ext={"ack": reply["ext"]["ack"]}, advice={"timeout": 0})
    assert deliveries == []


async def test_a_session_is_adopted_once_and_only_by_its_own_browser(
    make_node: NodeFactory,
) -> None:
    old, new = await make_node(), await make_node()
    client = await connected_client(old)
    client_id = client.client_id
    await old.close()
    thief = PipelineClient(new)
    thief.client_id = client_id
    thief.context.browser_id = "another-browser"
    _, reply = await thief.connect()
    assert reply["error"] == "402::session_unknown"
    _, reply = await move(client, new).connect()
    assert reply["successful"] is True
    other = await make_node()
    _, reply = await move(client, other).connect()
    assert reply["error"] == "402::session_unknown"  # adopted once, by `new`
