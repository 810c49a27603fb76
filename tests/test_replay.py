"""Durable channels and the Salesforce-style replay extension, on both engines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bayeux import BayeuxServer, Engine, MemoryEngine, ReplayExtension
from bayeux.redis_engine import RedisEngine
from tests.conftest import PipelineClient, Started, connected_client, fast_options
from tests.support.redis_server import RedisServer

DURABLE = "/events/orders"
INVALID = (
    "400::The replayId {} you provided was invalid.  Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)

NodeFactory = Callable[..., Awaitable[BayeuxServer]]


@pytest.fixture(params=["memory", "redis"])
async def make_node(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[NodeFactory]:
    """`await make_node(**options)`: a started server with durable `/events/**`; with the
    Redis engine every node shares one (freshly flushed) Redis."""
    if request.param == "redis":
        redis_server.client().flushall()

    async def make(**overrides: Any) -> BayeuxServer:
        options = fast_options(replay_channels=("/events/**",), **overrides)
        engine: Engine = (
            RedisEngine(redis_server.url, node_id=f"node{len(nodes.items)}")
            if request.param == "redis"
            else MemoryEngine()
        )
        server = BayeuxServer(options, engine=engine)
        server.add_extension(ReplayExtension())
        await server.start()
        return server

    async with Started(make, BayeuxServer.close) as nodes:
        yield nodes


async def replaying_client(server: BayeuxServer) -> PipelineClient:
    return await connected_client(server, ext={"replay": True})


async def receive(client: PipelineClient, count: int, channel: str = DURABLE) -> list[Any]:
    """Poll until `count` messages on `channel` arrived; their data, in order."""
    received: list[Any] = []
    async with asyncio.timeout(5):
        while len(received) < count:
            received += [m["data"] for m in await client.poll() if m["channel"] == channel]
            await asyncio.sleep(0.01)
    return received


def replay_ids(events: list[Any]) -> list[int]:
    return [event["event"]["replayId"] for event in events]


async def publish_numbers(client: PipelineClient, numbers: range) -> None:
    for n in numbers:
        assert (await client.publish(DURABLE, {"n": n}))["successful"] is True


async def test_handshake_negotiates_replay(make_node: NodeFactory) -> None:
    server = await make_node()
    client = PipelineClient(server)
    reply = await client.handshake(ext={"replay": True})
    assert reply["ext"]["replay"] is True
    assert reply["ext"]["payload.format"] is True


async def test_durable_events_carry_increasing_replay_ids(make_node: NodeFactory) -> None:
    server = await make_node()
    client = await replaying_client(server)
    await client.subscribe(DURABLE)
    await publish_numbers(client, range(3))
    assert (await client.publish(DURABLE, "plain"))["successful"] is True
    events = await receive(client, 4)
    assert replay_ids(events) == [1, 2, 3, 4]
    assert [e.get("n") for e in events[:3]] == [0, 1, 2]
    assert events[3] == {"event": {"replayId": 4}, "payload": "plain"}


async def test_subscribing_with_an_id_replays_every_event_after_it_then_live_ones(
    make_node: NodeFactory,
) -> None:
    server = await make_node()
    publisher = await replaying_client(server)
    await publish_numbers(publisher, range(10))
    late = await replaying_client(server)
    reply = await late.subscribe(DURABLE, ext={"replay": {DURABLE: 6}})
    assert reply["successful"] is True, reply
    await publish_numbers(publisher, range(10, 12))
    events = await receive(late, 6)
    assert replay_ids(events) == [7, 8, 9, 10, 11, 12]


async def test_minus_two_replays_everything_retained_and_minus_one_nothing(
    make_node: NodeFactory,
) -> None:
    server = await make_node()
    publisher = await replaying_client(server)
    await publish_numbers(publisher, range(3))
    everything, new_only = await replaying_client(server), await replaying_client(server)
    await everything.subscribe(DURABLE, ext={"replay": {DURABLE: -2}})
    await new_only.subscribe(DURABLE, ext={"replay": {DURABLE: -1}})
    await publish_numbers(publisher, range(3, 4))
    assert replay_ids(await receive(everything, 4)) == [1, 2, 3, 4]
    assert replay_ids(await receive(new_only, 1)) == [4]


@pytest.mark.parametrize("bad", [99, -3, "7", True, 1.5])
async def test_an_id_outside_the_window_fails_the_subscribe_as_salesforce_does(
    make_node: NodeFactory, bad: Any
) -> None:
    server = await make_node()
    client = await replaying_client(server)
    await publish_numbers(client, range(2))
    reply = await client.subscribe(DURABLE, ext={"replay": {DURABLE: bad}})
    assert reply["successful"] is False
    assert reply["error"] == INVALID.format(bad)
    assert reply["subscription"] == DURABLE


async def test_an_id_older_than_retention_is_invalid(make_node: NodeFactory) -> None:
    server = await make_node(replay_max_length=100)
    client = await replaying_client(server)
    await publish_numbers(client, range(400))
    first, last = await server.engine.history_bounds(DURABLE)
    assert last == 400 and first > 1  # Redis trims approximately (MAXLEN ~)
    reply = await client.subscribe(DURABLE, ext={"replay": {DURABLE: 0}})
    assert reply["error"] == INVALID.format(0)
    reply = await client.subscribe(DURABLE, ext={"replay": {DURABLE: first - 1}})
    assert reply["successful"] is True
    assert len(await receive(client, last - first + 1)) == last - first + 1


async def test_events_published_during_a_replay_are_neither_lost_nor_repeated(
    make_node: NodeFactory,
) -> None:
    server = await make_node()
    publisher = await replaying_client(server)
    await publish_numbers(publisher, range(200))
    late = await replaying_client(server)
    await asyncio.gather(
        late.subscribe(DURABLE, ext={"replay": {DURABLE: 50}}),
        publish_numbers(publisher, range(200, 300)),
    )
    events = await receive(late, 250)
    assert replay_ids(events) == list(range(51, 301))


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_a_client_resumes_on_another_node_from_its_last_replay_id(
    make_node: NodeFactory,
) -> None:
    first_node, second_node = await make_node(), await make_node()
    publisher = await replaying_client(first_node)
    reader = await replaying_client(first_node)
    await reader.subscribe(DURABLE, ext={"replay": {DURABLE: -1}})
    await publish_numbers(publisher, range(5))
    seen = replay_ids(await receive(reader, 5))
    await publish_numbers(publisher, range(5, 9))  # the reader is away
    resumed = await replaying_client(second_node)
    await resumed.subscribe(DURABLE, ext={"replay": {DURABLE: seen[-1]}})
    assert replay_ids(await receive(resumed, 4)) == [6, 7, 8, 9]


async def test_non_durable_channels_ignore_replay_requests(make_node: NodeFactory) -> None:
    server = await make_node()
    client = await replaying_client(server)
    reply = await client.subscribe("/chat/room", ext={"replay": {"/chat/room": 99}})
    assert reply["successful"] is True
    await client.publish("/chat/room", "hi")
    assert await receive(client, 1, "/chat/room") == ["hi"]


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_a_durable_publish_costs_one_script_call_and_survives_a_script_flush(
    make_node: NodeFactory, redis_server: RedisServer
) -> None:
    """EVALSHA straight away (no SCRIPT EXISTS per batch); when Redis has forgotten the
    script (a restart, SCRIPT FLUSH) the node loads it again and nothing is lost."""
    server = await make_node()
    client = await replaying_client(server)
    await client.subscribe(DURABLE)
    await publish_numbers(client, range(3))
    redis_client = redis_server.client()
    redis_client.script_flush()
    redis_client.config_resetstat()
    await publish_numbers(client, range(3, 23))
    assert replay_ids(await receive(client, 23)) == list(range(1, 24))
    stats = redis_client.info("commandstats")
    script_calls = {k: v["calls"] for k, v in stats.items() if k.startswith("cmdstat_script")}
    assert sum(script_calls.values()) == 1, script_calls  # one SCRIPT LOAD, after the flush
    assert stats["cmdstat_evalsha"]["calls"] == 21  # 20, plus the one Redis refused
