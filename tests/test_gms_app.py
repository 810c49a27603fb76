"""The GMS server application mounts Bayeux where GMS and CometD clients look for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chat.app import create_app

HANDSHAKE = [{"channel": "/meta/handshake", "version": "1.0", "id": "1"}]


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    async with TestClient(TestServer(create_app())) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/genesys/cometd", "/cometd", "/genesys/cometd/handshake"])
async def test_cometd_is_served_where_gms_and_cometd_clients_look(
    client: TestClient[object, object], path: str
) -> None:
    response = await client.post(path, json=HANDSHAKE)
    assert response.status == 200
    [reply] = await response.json()
    assert reply["successful"] is True
    assert reply["channel"] == "/meta/handshake"
    assert len(reply["clientId"]) == 32


async def test_health_reports_ok_and_session_count(client: TestClient[object, object]) -> None:
    await client.post("/cometd", json=HANDSHAKE)
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "node": "memory", "sessions": 1}
