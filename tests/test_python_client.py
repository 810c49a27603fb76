"""Interop with a third-party Python CometD client against the standalone server process.

The client is `aiocometd-ng` (a maintained fork of aiocometd): aiocometd 0.4.5 itself cannot
run on Python >= 3.10 (it passes `loop=` to `asyncio.Semaphore`). The server runs as
`python -m bayeux` through tests/support/processes.py.

The URL uses `localhost`, not `127.0.0.1`: aiohttp's default cookie jar ignores cookies from IP
address hosts, so against an IP the client never returns the BAYEUX_BROWSER cookie and every
request after the handshake gets `402::session_unknown` (as CometD would answer too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiocometd_ng import Client, ConnectionType

from tests.support.processes import ServerProcess, running_bayeux_server

RECEIVE_TIMEOUT = 5.0

# aiocometd-ng calls aiohttp with arguments aiohttp has deprecated (receive_timeout, ssl=None).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:aiohttp.client")


@pytest.fixture(scope="module")
def bayeux_process() -> Iterator[ServerProcess]:
    with running_bayeux_server({"timeout": 1_000, "max_interval": 5_000}) as server:
        yield server


@pytest.fixture(params=[ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET], ids=str)
def connection_type(request: pytest.FixtureRequest) -> ConnectionType:
    return ConnectionType(request.param)


@asynccontextmanager
async def cometd_client(
    server: ServerProcess, connection_type: ConnectionType
) -> AsyncIterator[Client]:
    url = f"http://localhost:{server.port}/cometd"
    async with Client(url, connection_types=[connection_type], connection_timeout=5) as client:
        assert client.connection_type == connection_type
        yield client


async def receive(client: Client) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(client.receive(), RECEIVE_TIMEOUT)
    return message


async def test_client_receives_its_own_publish(
    bayeux_process: ServerProcess, connection_type: ConnectionType
) -> None:
    channel = f"/py/self/{connection_type.name.lower()}"
    async with cometd_client(bayeux_process, connection_type) as client:
        await client.subscribe(channel)
        response = await client.publish(channel, {"n": 1})
        assert response["successful"] is True
        assert await receive(client) == {"channel": channel, "data": {"n": 1}}


async def test_client_receives_what_another_client_publishes(
    bayeux_process: ServerProcess, connection_type: ConnectionType
) -> None:
    channel = f"/py/pair/{connection_type.name.lower()}"
    async with (
        cometd_client(bayeux_process, connection_type) as subscriber,
        cometd_client(bayeux_process, ConnectionType.LONG_POLLING) as publisher,
    ):
        await subscriber.subscribe(channel)
        for n in range(3):
            await publisher.publish(channel, {"n": n})
        received = [await receive(subscriber) for _ in range(3)]
        assert received == [{"channel": channel, "data": {"n": n}} for n in range(3)]


async def test_client_subscribed_to_a_wildcard_receives_matching_channels(
    bayeux_process: ServerProcess, connection_type: ConnectionType
) -> None:
    base = f"/py/wild/{connection_type.name.lower()}"
    async with cometd_client(bayeux_process, connection_type) as client:
        await client.subscribe(base + "/**")
        await client.publish(base + "/a/b", {"depth": 2})
        assert await receive(client) == {"channel": base + "/a/b", "data": {"depth": 2}}


async def test_echo_service_answers_the_client(
    bayeux_process: ServerProcess, connection_type: ConnectionType
) -> None:
    async with cometd_client(bayeux_process, connection_type) as client:
        await client.subscribe("/service/echo")
        await client.publish("/service/echo", {"ping": True})
        assert await receive(client) == {"channel": "/service/echo", "data": {"ping": True}}


async def test_remote_call_returns_its_result_in_the_publish_response(
    bayeux_process: ServerProcess, connection_type: ConnectionType
) -> None:
    async with cometd_client(bayeux_process, connection_type) as client:
        response = await client.publish("/service/rpc/echo", {"question": 42})
        assert response["successful"] is True
        assert response["data"] == {"question": 42}
