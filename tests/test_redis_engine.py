"""The Redis engine against a real redis-server: nodes in one process, each its own engine."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from bayeux import BayeuxOptions, BayeuxServer, RequestContext
from bayeux.redis_engine import RedisEngine
from tests.support.redis_server import RedisServer


@dataclass
class Recorder:
    """A push link that keeps every message it is sent."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    writable: bool = True

    def send(self, payload: bytes) -> bool:
        self.messages.extend(orjson.loads(payload))
        return True

    def data_on(self, channel: str) -> list[Any]:
        return [m["data"] for m in self.messages if m["channel"] == channel and "data" in m]


@dataclass
class Client:
    server: BayeuxServer
    client_id: str
    link: Recorder
    context: RequestContext

    async def send(self, **message: Any) -> dict[str, Any]:
        result = await self.server.handle_batch(
            [{"clientId": self.client_id, **message}], self.context
        )
        return result.replies[0] if result.replies else {}

    async def subscribe(self, *channels: str) -> dict[str, Any]:
        return await self.send(channel="/meta/subscribe", subscription=list(channels))

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        return await self.send(channel=channel, data=data)


async def connect(server: BayeuxServer) -> Client:
    link = Recorder()
    context = RequestContext(transport="websocket", link=link, browser_id="test")
    handshake = {"channel": "/meta/handshake", "version": "1.0"}
    reply = (await server.handle_batch([handshake], context)).replies[0]
    client = Client(server, reply["clientId"], link, context)
    await client.send(channel="/meta/connect", connectionType="websocket", advice={"timeout": 0})
    return client


async def eventually(predicate: Any, timeout: float = 5.0, what: Any = None) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in time: {what() if what else ''}")
        await asyncio.sleep(0.01)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for each test (not tests/conftest.py's one per module): some tests
    stop and restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[list[BayeuxServer]]:
    servers = [
        BayeuxServer(BayeuxOptions(), engine=RedisEngine(redis_server.url, node_id=f"n{i}"))
        for i in range(2)
    ]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.close()


async def test_a_publish_on_one_node_reaches_subscribers_on_every_node_in_order(
    nodes: list[BayeuxServer],
) -> None:
    a, b = nodes
    on_a, on_b, publisher = await connect(a), await connect(a), await connect(b)
    for client in (on_a, on_b):
        assert (await client.subscribe("/room"))["successful"] is True
    for i in range(200):
        assert (await publisher.publish("/room", i))["successful"] is True
    await eventually(lambda: len(on_a.link.data_on("/room")) == 200)
    assert on_a.link.data_on("/room") == list(range(200))
    assert on_b.link.data_on("/room") == list(range(200))


async def test_redis_work_per_publish_does_not_grow_with_subscribers(
    nodes: list[BayeuxServer], redis_server: RedisServer
) -> None:
    a, b = nodes
    subscribers = [await connect(node) for node in (a, b) for _ in range(50)]
    for client in subscribers:
        await client.subscribe("/fan")
    publisher = await connect(a)
    redis_client = redis_server.client()
    redis_client.config_resetstat()
    for i in range(40):
        await publisher.publish("/fan", i)
    await eventually(lambda: all(len(c.link.data_on("/fan")) == 40 for c in subscribers))
    stats = redis_client.info("commandstats")
    publishes = stats["cmdstat_publish"]["calls"]
    heartbeats = ("cmdstat_zadd", "cmdstat_zrangebyscore", "cmdstat_config", "cmdstat_info")
    connection_setup = ("cmdstat_hello", "cmdstat_client")
    others = {
        k: v["calls"]
        for k, v in stats.items()
        if k not in ("cmdstat_publish", *heartbeats, *connection_setup)
    }
    assert publishes == 40  # one per message, for 100 subscribers on two nodes
    assert others == {}, others  # nothing else per message


async def test_wildcards_across_nodes_match_by_bayeux_rules(nodes: list[BayeuxServer]) -> None:
    a, b = nodes
    one_level, deep = await connect(b), await connect(b)
    await one_level.subscribe("/a/*")
    await deep.subscribe("/a/**")
    publisher = await connect(a)
    await publisher.publish("/a/b/c", "deep")
    await publisher.publish("/a/b", "shallow")
    await eventually(lambda: len(deep.link.data_on("/a/b")) == 1)
    assert deep.link.data_on("/a/b/c") == ["deep"]
    await asyncio.sleep(0.05)
    assert one_level.link.data_on("/a/b") == ["shallow"]
    assert one_level.link.data_on("/a/b/c") == []


async def test_broadcast_to_publisher_off_excludes_the_publisher_on_other_nodes_too(
    redis_server: RedisServer,
) -> None:
    options = BayeuxOptions(broadcast_to_publisher=False)
    a = BayeuxServer(options, engine=RedisEngine(redis_server.url, node_id="a"))
    b = BayeuxServer(options, engine=RedisEngine(redis_server.url, node_id="b"))
    await a.start()
    await b.start()
    try:
        publisher, listener = await connect(a), await connect(b)
        await publisher.subscribe("/x")
        await listener.subscribe("/x")
        await publisher.publish("/x", 1)
        await eventually(lambda: listener.link.data_on("/x") == [1])
        await asyncio.sleep(0.05)
        assert publisher.link.data_on("/x") == []
    finally:
        await a.close()
        await b.close()


async def test_deliver_to_user_reaches_that_users_sessions_on_every_node(
    nodes: list[BayeuxServer],
) -> None:
    a, b = nodes
    alice_a, alice_b, bob = await connect(a), await connect(b), await connect(b)
    await a.bind_user(a.sessions[alice_a.client_id], "alice")
    await b.bind_user(b.sessions[alice_b.client_id], "alice")
    await b.bind_user(b.sessions[bob.client_id], "bob")
    await a.deliver_to_user("alice", "/_genesys", {"hello": "alice"})
    await eventually(lambda: alice_b.link.data_on("/_genesys") == [{"hello": "alice"}])
    assert alice_a.link.data_on("/_genesys") == [{"hello": "alice"}]
    await asyncio.sleep(0.05)
    assert bob.link.data_on("/_genesys") == []


async def test_unsubscribing_the_last_local_subscriber_stops_listening_in_redis(
    nodes: list[BayeuxServer], redis_server: RedisServer
) -> None:
    _, b = nodes
    listener = await connect(b)
    await listener.subscribe("/gone")
    redis_client = redis_server.client()
    assert redis_client.pubsub_numsub(b"bayeux:c:/gone") == [(b"bayeux:c:/gone", 1)]
    await listener.send(channel="/meta/unsubscribe", subscription="/gone")
    await eventually(lambda: redis_client.pubsub_numsub(b"bayeux:c:/gone")[0][1] == 0)


async def test_when_redis_goes_away_publishes_fail_clearly_and_the_node_recovers(
    nodes: list[BayeuxServer], redis_server: RedisServer
) -> None:
    a, b = nodes
    listener, publisher = await connect(b), await connect(a)
    await listener.subscribe("/r")
    redis_server.stop()
    await eventually(lambda: not a.engine.healthy and not b.engine.healthy)
    reply = await publisher.publish("/r", "lost")
    assert reply["successful"] is False
    assert reply["error"] == "503::engine_unavailable"
    assert (await listener.subscribe("/other"))["error"] == "503::engine_unavailable"
    redis_server.start()
    await eventually(lambda: a.engine.healthy and b.engine.healthy, timeout=10)
    await eventually(lambda: redis_server.client().pubsub_numsub(b"bayeux:c:/r")[0][1] == 1)
    assert (await publisher.publish("/r", "after"))["successful"] is True
    await eventually(lambda: listener.link.data_on("/r") == ["after"])


async def test_a_redis_that_hangs_without_failing_turns_the_node_unhealthy(
    redis_server: RedisServer,
) -> None:
    """Commands carry no socket timeout (they would cost a tenth of a busy node's CPU), so a
    Redis that stops answering (SIGSTOP) is caught by the heartbeat's own deadline."""
    engine = RedisEngine(redis_server.url, node_id="hung", heartbeat=0.1, node_timeout=0.5)
    server = BayeuxServer(BayeuxOptions(), engine=engine)
    await server.start()
    publisher = await connect(server)
    assert redis_server.process is not None
    try:
        redis_server.process.send_signal(signal.SIGSTOP)
        await eventually(lambda: not engine.healthy, timeout=3)
        assert (await publisher.publish("/h", "x"))["error"] == "503::engine_unavailable"
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await eventually(lambda: engine.healthy, timeout=5)
    assert (await publisher.publish("/h", "y"))["successful"] is True
    await server.close()


async def test_nodes_register_and_a_silent_node_is_reported_lost_once(
    redis_server: RedisServer,
) -> None:
    engines = [
        RedisEngine(redis_server.url, node_id=name, heartbeat=0.1, node_timeout=2.0)
        for name in ("alive1", "alive2")
    ]
    servers = [BayeuxServer(BayeuxOptions(), engine=engine) for engine in engines]
    lost: list[str] = []
    for engine, server in zip(engines, servers, strict=True):
        engine.on_node_lost(lost.append)
        await server.start()
    try:
        # A node that crashed ten seconds ago: its last heartbeat is all that is left of it.
        registry = engines[0].registry_key()
        redis_server.client().zadd(registry, {"crashed": int(time.time() * 1000) - 10_000})
        await eventually(lambda: lost == ["crashed"], timeout=5, what=lambda: lost)
        assert sorted(await engines[0].nodes()) == ["alive1", "alive2"]
        await asyncio.sleep(0.3)
        assert lost == ["crashed"]
    finally:
        for server in servers:
            await server.close()
    assert redis_server.client().zrange(registry, 0, -1) == []  # a clean leave


async def test_deliver_to_session_reaches_one_session_on_its_node(
    nodes: list[BayeuxServer],
) -> None:
    a, b = nodes
    target, bystander = await connect(b), await connect(b)
    node_b = b.engine.node_id
    await a.deliver_to_session(node_b, target.client_id, "/service/chatV2/x", {"n": 1})
    await eventually(lambda: target.link.data_on("/service/chatV2/x") == [{"n": 1}])
    await asyncio.sleep(0.05)
    assert bystander.link.data_on("/service/chatV2/x") == []
