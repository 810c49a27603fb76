"""GMS Service API (spec-gms-core §7): service sessions, their business data (service storage)
and deletion, on the memory and the Redis stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import FormData

from chat.config import ChatConfig, ServiceConfig, load_config
from chat.service_api import chat_service_of, java_text, service_sections
from tests.support.chat_v1 import ROOT, STORES, V1Env, v1_env
from tests.support.redis_server import RedisServer


def config() -> ChatConfig:
    return ChatConfig(
        services={"customer-support": ServiceConfig("customer-support")},
        sections={"service.short-lived": {"_ttl": "1"}, "Service.callback": {}},
    )


@pytest.fixture(params=STORES)
async def env(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[V1Env]:
    async with v1_env(request.param, redis_server, config()) as running:
        yield running


async def test_create_stores_business_data_but_not_underscore_keys(env: V1Env) -> None:
    reply = await env.post("callback", {"Key1": "Value6", "Key2": "Value7", "_verbose": "x"})
    assert reply.status == 200
    service_id = reply.body["_id"]
    assert set(reply.body) == {"_id", "_data_id"}
    stored = await env.get(f"{service_id}/storage")
    assert (stored.status, stored.body) == (200, {"Key1": "Value6", "Key2": "Value7"})


async def test_json_bodies_are_flat_and_complex_values_are_stringified(env: V1Env) -> None:
    body = {
        "firstName": "John",
        "address": {"street": "mystreet", "city": "mycity"},
        "numbers": ["9002@SIP_Switch", "5555666"],
        "vip": True,
        "_ignored": "yes",
    }
    reply = await env.post("request-chat", json=body, gms_user="default")
    stored = await env.get(f"{reply.body['_id']}/storage")
    assert stored.body == {
        "firstName": "John",
        "address": "{street=mystreet, city=mycity}",
        "numbers": "[9002@SIP_Switch, 5555666]",
        "vip": "true",
    }


async def test_malformed_json_is_500_could_not_read_json(env: V1Env) -> None:
    reply = await env.post(
        "request-chat", data=b'{"a" "b"}', headers={"Content-Type": "application/json"}
    )
    assert reply.status == 500
    assert list(reply.body) == ["message"]
    assert reply.body["message"].startswith("Could not read JSON")


async def test_unknown_services_are_404(env: V1Env) -> None:
    reply = await env.post("no-such-service", {})
    assert reply.status == 404
    assert reply.body["exception"].endswith("ServiceNotFoundException")
    assert (await env.get("no-such-id/storage")).status == 404
    assert (await env.delete("no-such-id")).status == 404


async def test_service_specific_requests_no_service_supports_are_rejected(env: V1Env) -> None:
    """`status` is a request of ORS-driven services (`request-chat-poll`), not of ours."""
    service_id = await env.service()
    reply = await env.post(f"{service_id}/status", {})
    assert reply.status == 400
    assert reply.body == {
        "message": "Service request-chat does not support the request 'status'",
        "exception": "com.genesyslab.gsg.services.service.BadRequestException",
    }
    assert (await env.post("no-such-id/status", {})).status == 404
    assert (await env.post("request-chat-poll", {})).status == 404


async def test_storage_reads_one_key_as_an_object(env: V1Env) -> None:
    service_id = (await env.post("callback", {"Key1": "Value1"})).body["_id"]
    one = await env.get(f"{service_id}/storage/Key1")
    assert (one.status, one.body) == (200, {"Key1": "Value1"})
    assert (await env.get(f"{service_id}/storage/Nope")).status == 404


async def test_storage_writes_merge_and_deletes_remove(env: V1Env) -> None:
    service_id = (await env.post("callback", {"a": "1", "b": "2"})).body["_id"]
    assert (await env.post(f"{service_id}/storage", {"b": "20", "c": "3"})).status == 200
    assert (await env.get(f"{service_id}/storage")).body == {"a": "1", "b": "20", "c": "3"}
    deleted = await env.delete(f"{service_id}/storage/a")
    assert (deleted.status, deleted.body) == (200, "OK")
    assert (await env.get(f"{service_id}/storage")).body == {"b": "20", "c": "3"}
    assert (await env.delete(f"{service_id}/storage")).status == 200
    assert (await env.get(f"{service_id}/storage")).body == {}


async def test_storage_starts_on_a_service_created_without_data(env: V1Env) -> None:
    service_id = await env.service()
    assert (await env.get(f"{service_id}/storage")).body == {}
    assert (await env.post(f"{service_id}/storage", json={"k": 1})).status == 200
    assert (await env.get(f"{service_id}/storage/k")).body == {"k": "1"}


async def test_files_are_stored_and_served_as_binaries(env: V1Env) -> None:
    service_id = await env.service()
    form = FormData()
    form.add_field("photo", b"\x89PNG...", filename="p.png", content_type="image/png")
    form.add_field("caption", "me")
    assert (await env.post(f"{service_id}/storage", data=form)).status == 200
    listing = (await env.get(f"{service_id}/storage")).body
    assert listing["caption"] == "me"
    assert listing["photo"] == f"{env.base}{ROOT}/{service_id}/storage/binary/photo"
    async with env.http.get(listing["photo"]) as response:
        assert response.status == 200
        assert response.content_type == "image/png"
        assert await response.read() == b"\x89PNG..."
    assert (await env.get(f"{service_id}/storage/binary/caption")).status == 404


async def test_delete_service_removes_it_and_its_data(env: V1Env) -> None:
    service_id = (await env.post("callback", {"k": "v"})).body["_id"]
    assert (await env.delete(service_id)).status == 200
    assert (await env.get(f"{service_id}/storage")).status == 404
    assert (await env.post(f"{service_id}/ixn/chat", {})).status == 404


async def test_services_expire_after_their_ttl(env: V1Env) -> None:
    kept = (await env.post("short-lived", {"k": "v", "_ttl": "60"})).body["_id"]
    gone = (await env.post("short-lived", {"k": "v"})).body["_id"]
    await asyncio.sleep(1.2)
    assert (await env.get(f"{gone}/storage")).status == 404
    assert (await env.get(f"{kept}/storage")).body == {"k": "v"}


def test_service_sections_and_their_chat_service() -> None:
    cfg = config()
    assert set(service_sections(cfg)) == {"request-chat", "short-lived", "callback"}
    assert chat_service_of(cfg, "request-chat", {}) == "customer-support"
    with pytest.raises(ValueError, match="_chat_service"):
        chat_service_of(cfg, "x", {"_chat_service": "missing"})


def test_fast_transcript_refresh_is_read_with_its_gms_name(tmp_path: Path) -> None:
    path = tmp_path / "gms.ini"
    path.write_text("[chat]\nenable-fast-chat-transcript-refresh = true\n")
    assert load_config(path).enable_fast_chat_transcript_refresh is True


def test_java_text_prints_like_java() -> None:
    assert java_text({"a": [1, None, {"b": False}]}) == "{a=[1, null, {b=false}]}"
    assert java_text(2.5) == "2.5"
