"""GMS Storage API (memory and Redis) and Node API, over HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bayeux.app import BAYEUX_SERVER
from chat.app import create_app
from chat.config import ChatConfig
from chat.passwords import hash_password
from chat.storage import MemoryStorage, RedisStorage, StorageBackend
from tests.support.redis_server import RedisServer

ADMIN = ("admin", "s3cret")
Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]


def config(**auth: str) -> ChatConfig:
    credentials = f"{ADMIN[0]}:{hash_password(ADMIN[1], iterations=1000)}"
    return ChatConfig(sections={"auth": {"credentials": credentials, **auth}})


@pytest.fixture(params=["memory", "redis"])
async def client(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Client]:
    storage: StorageBackend = (
        RedisStorage(redis_server.url, prefix=f"t{id(request)}")
        if request.param == "redis"
        else MemoryStorage()
    )
    app = create_app(config=config(), storage=storage)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_create_read_update_and_delete_an_area(client: Client) -> None:
    created = await client.post("/genesys/1/storage/60", data={"a": "1", "b": "2", "_hidden": "x"})
    assert created.status == 200
    area = (await created.json())["id"]
    assert await (await client.get(f"/genesys/1/storage/{area}")).json() == {"a": "1", "b": "2"}
    updated = await client.post(f"/genesys/1/storage/{area}/60", data={"a": "10", "c": "3"})
    assert await updated.json() == {}
    assert await (await client.get(f"/genesys/1/storage/{area}")).json() == {
        "a": "10",
        "b": "2",
        "c": "3",
    }
    single = await client.get(f"/genesys/1/storage/{area}/b")
    assert (await single.text(), single.content_type) == ("2", "text/plain")
    assert (await client.delete(f"/genesys/1/storage/{area}")).status == 200
    missing = await client.get(f"/genesys/1/storage/{area}")
    assert missing.status == 404
    assert (await missing.json())["message"] == "Storage ID not found"


async def test_an_area_expires_after_its_ttl(client: Client) -> None:
    created = await client.post("/genesys/1/storage/1", data={"k": "v"})
    area = (await created.json())["id"]
    assert (await client.get(f"/genesys/1/storage/{area}")).status == 200
    await asyncio.sleep(1.2)
    assert (await client.get(f"/genesys/1/storage/{area}")).status == 404


async def test_an_invalid_ttl_silently_means_thirty_seconds(client: Client) -> None:
    created = await client.post("/genesys/1/storage/-5", data={"k": "v"})
    assert created.status == 200


async def test_files_are_stored_and_served_from_their_binary_link(client: Client) -> None:
    form = aiohttp.FormData()
    form.add_field("name", "photo")
    form.add_field("picture", b"\x89PNG\x00\x01", filename="me.png", content_type="image/png")
    area = (await (await client.post("/genesys/1/storage/60", data=form)).json())["id"]
    listing = await (await client.get(f"/genesys/1/storage/{area}")).json()
    link = listing["picture"]
    assert link.endswith(f"/genesys/1/storage/binary/{area}/picture")
    binary = await client.get(f"/genesys/1/storage/binary/{area}/picture")
    assert await binary.read() == b"\x89PNG\x00\x01"
    assert binary.content_type == "image/png"
    assert 'filename="me.png"' in binary.headers["Content-Disposition"]


async def test_custom_ids_need_and_belong_to_a_gms_user(client: Client) -> None:
    no_user = await client.post("/genesys/1/storage/custom/cart-1/60", data={"k": "v"})
    assert no_user.status == 400
    owner = {"gms_user": "alice"}
    made = await client.post("/genesys/1/storage/custom/cart-1/60", data={"k": "v"}, headers=owner)
    assert await made.json() == {"id": "cart-1"}
    assert (await client.get("/genesys/1/storage/cart-1", headers=owner)).status == 200
    other = await client.get("/genesys/1/storage/cart-1", headers={"gms_user": "mallory"})
    assert other.status == 404


async def test_node_status_needs_basic_auth(client: Client) -> None:
    assert (await client.get("/genesys/1/admin/node/status")).status == 401
    wrong = await client.get("/genesys/1/admin/node/status", headers=basic("admin", "nope"))
    assert wrong.status == 401
    assert wrong.headers["WWW-Authenticate"] == 'Basic realm="GMS"'
    ok = await client.get("/genesys/admin/1/node/status", headers=basic(*ADMIN))
    assert (ok.status, await ok.text()) == (200, "ONLINE")


async def test_offline_drains_cometd_clients_and_fails_health(client: Client) -> None:
    handshake = [{"channel": "/meta/handshake", "version": "1.0"}]
    reply = await (await client.post("/genesys/cometd", json=handshake)).json()
    assert reply[0]["successful"] is True
    bayeux = client.app[BAYEUX_SERVER]
    assert len(bayeux.sessions) == 1
    changed = await client.post("/genesys/1/admin/node/changestatus/offline", headers=basic(*ADMIN))
    assert changed.status == 200
    assert bayeux.sessions == {}
    status = await client.get("/genesys/1/admin/node/status", headers=basic(*ADMIN))
    assert await status.text() == "OFFLINE"
    health = await client.get("/health")
    assert health.status == 503
    assert (await health.json())["status"] == "draining"
    await client.post("/genesys/1/admin/node/changestatus/ONLINE", headers=basic(*ADMIN))
    assert (await client.get("/health")).status == 200
    bad = await client.post("/genesys/1/admin/node/changestatus/SLEEPY", headers=basic(*ADMIN))
    assert bad.status == 400


async def test_storage_can_require_basic_auth() -> None:
    app = create_app(config=config(storage="true"))
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/genesys/1/storage/60", data={"k": "v"})).status == 401
        ok = await client.post("/genesys/1/storage/60", data={"k": "v"}, headers=basic(*ADMIN))
        assert ok.status == 200
