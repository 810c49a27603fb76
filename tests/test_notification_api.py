"""GMS Notification API over HTTP (memory and Redis subscription stores): subscribe, delete,
publish workflows, tag/filter matching, expiry, every delivery type against a local receiver,
comet delivery to the CometD sessions of one gms_user, fan-out, failures, localization."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bayeux import BayeuxServer
from bayeux.app import BAYEUX_SERVER
from chat.app import create_app
from chat.config import ChatConfig
from chat.notification import (
    MemorySubscriptions,
    RedisSubscriptions,
    Subscription,
    SubscriptionStore,
    candidate_filters,
    matches,
    valid_filter,
    valid_tag,
)
from chat.notification_api import NOTIFICATION_API, NotificationApi
from chat.passwords import hash_password
from tests.conftest import PipelineClient, Started
from tests.support.processes import free_port
from tests.support.receiver import Receiver, receiver
from tests.support.redis_server import RedisServer

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]
JSON = {"Content-Type": "application/json"}
SUBSCRIBE = "/genesys/1/notification/subscription"
PUBLISH = "/genesys/1/notification/publish"
NS = "com.genesyslab.gsg.services.notification."
HEX32 = re.compile(r"^[0-9a-f]{32}$")
DOC_TAG = "ors.agentavailability.agent123.available"


@pytest.fixture
async def sink() -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Gms:
    """One server (create_app on a TestServer) and helpers to call its Notification API."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.api: NotificationApi = client.app[NOTIFICATION_API]
        self.bayeux: BayeuxServer = client.app[BAYEUX_SERVER]

    async def close(self) -> None:
        await self.client.close()

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        response = await self.client.post(path, json=body, headers={**JSON, **(headers or {})})
        text = await response.text()
        return response.status, _json_or_text(text)

    async def post_subscription(self, gms_user: str | None = None, **body: Any) -> tuple[int, Any]:
        """Subscribes, successfully or not: (status, reply)."""
        headers = {"gms_user": gms_user} if gms_user else {}
        return await self.post(SUBSCRIBE, body, headers)

    async def subscribe(self, gms_user: str | None = None, **body: Any) -> str:
        status, reply = await self.post_subscription(gms_user, **body)
        assert status == 200, reply
        assert set(reply) == {"id"}
        return str(reply["id"])

    async def comet(self, gms_user: str, filter_: str, **body: Any) -> str:
        return await self.subscribe(
            gms_user,
            subscriberId=body.pop("subscriberId", gms_user),
            filter=filter_,
            notificationDetails={"type": "comet"},
            **body,
        )

    async def publish(self, **body: Any) -> tuple[int, Any]:
        return await self.post(PUBLISH, body)

    async def delete(self, path: str) -> tuple[int, Any]:
        response = await self.client.delete(path)
        return response.status, _json_or_text(await response.text())

    async def user(self, gms_user: str, subscribe: bool = True) -> PipelineClient:
        """A CometD session of `gms_user` (bound at handshake by the gms_user header)."""
        client = PipelineClient(self.bayeux)
        client.context.headers = {"gms_user": gms_user}
        assert (await client.handshake())["successful"] is True
        await client.connect()
        if subscribe:
            assert (await client.subscribe("/_genesys"))["successful"] is True
        return client


def _json_or_text(text: str) -> Any:
    import orjson

    try:
        return orjson.loads(text) if text else ""
    except orjson.JSONDecodeError:
        return text


GmsFactory = Callable[..., Awaitable[Gms]]


@pytest.fixture
async def make_gms(
    store_kind: str, redis_server: RedisServer, sink: Receiver
) -> AsyncIterator[GmsFactory]:
    """`await make_gms(push=..., notification=..., auth=..., **sections)`: a server whose
    `[push]` points every provider at the local receiver, on the parametrised store."""

    async def make(**sections: dict[str, str]) -> Gms:
        push = {
            "pushEnabled": '"customhttp, httpcb, fcm, android, ios, wns"',
            "customhttp.url": f"{sink.url}/custom",
            "fcm.url": f"{sink.url}/fcm",
            "fcm": "fcm-secrets",
            "apple.url": f"{sink.url}/apns",
            "debug.apple.url": f"{sink.url}/apns-debug",
            "wns.url": f"{sink.url}/wns",
            **sections.pop("push", {}),
        }
        notification = {"delivery-retries": "0", **sections.pop("notification", {})}
        if store_kind == "redis":
            notification.setdefault("store", redis_server.url)
            notification.setdefault("redis-prefix", f"t{uuid.uuid4().hex[:8]}")
        else:
            notification.setdefault("store", "memory")
        config = ChatConfig(
            sections={
                "push": push,
                "fcm-secrets": {"password": "server-key"},
                "notification": notification,
                **sections,
            }
        )
        client: Client = TestClient(TestServer(create_app(config=config)))
        await client.start_server()
        return Gms(client)

    async with Started(make, Gms.close) as started:
        yield started


@pytest.fixture
async def gms(make_gms: GmsFactory) -> Gms:
    return await make_gms()


# -- grammar and matching (pure) ------------------------------------------------------------

MATCHING_TABLE = [
    # (filter, tag, matches)
    ("*", DOC_TAG, True),
    ("ors.*", DOC_TAG, True),
    ("ors.agentavailability.*", DOC_TAG, True),
    ("ors.agentavailability.agent123.*", DOC_TAG, True),
    (DOC_TAG, DOC_TAG, True),
    ("ors", DOC_TAG, False),
    ("ors.agentavailability", DOC_TAG, False),
    ("ors.agentavailability.agent12.*", DOC_TAG, False),  # no partial segments
    (DOC_TAG + ".*", DOC_TAG, False),
    ("Ors.*", DOC_TAG, False),  # case-sensitive
    ("ORS.AGENTAVAILABILITY.AGENT123.AVAILABLE", DOC_TAG, False),
    ("ors.*", "ors", False),
    ("*", "ors", True),
    ("ors", "ors", True),
    ("9a.*", "9a.b_c", True),
    ("ors.agent.*", DOC_TAG, False),
]


@pytest.mark.parametrize(("filter_", "tag", "expected"), MATCHING_TABLE)
def test_matching_table(filter_: str, tag: str, expected: bool) -> None:
    assert valid_filter(filter_) and valid_tag(tag)
    assert matches(filter_, tag) is expected
    # the stores' index lookup finds exactly the matching filters
    assert (filter_ in candidate_filters(tag)) is expected


@pytest.mark.parametrize(
    ("value", "is_filter", "is_tag"),
    [
        ("ors.context.123456", True, True),
        ("123.abc_DEF", True, True),
        ("*", True, False),
        ("ors.*", True, False),
        ("", False, False),
        ("ors.", False, False),
        (".ors", False, False),
        ("ors..x", False, False),
        ("ors.ag*", False, False),
        ("a.*.b", False, False),
        ("*.a", False, False),
        ("a.**", False, False),
        ("a-b", False, False),
        ("chat.savings-english.Message", False, False),
        ("é.x", False, False),
        ("a b", False, False),
    ],
)
def test_tag_and_filter_grammar(value: str, is_filter: bool, is_tag: bool) -> None:
    assert valid_filter(value) is is_filter
    assert valid_tag(value) is is_tag


# -- the stores ---------------------------------------------------------------------------


@pytest.fixture
async def store(store_kind: str, redis_server: RedisServer) -> AsyncIterator[SubscriptionStore]:
    made: SubscriptionStore = (
        RedisSubscriptions(redis_server.url, prefix=f"s{uuid.uuid4().hex[:8]}")
        if store_kind == "redis"
        else MemorySubscriptions()
    )
    yield made
    await made.close()


def _sub(filter_: str, subscriber: str = "s", **fields: Any) -> Subscription:
    return Subscription(str(uuid.uuid4()), subscriber, filter_, "comet", **fields)


async def test_store_matching_follows_the_table(store: SubscriptionStore) -> None:
    by_filter: dict[str, str] = {}
    for filter_ in {f for f, _, _ in MATCHING_TABLE}:
        subscription = _sub(filter_)
        await store.add(subscription, 60)
        by_filter[subscription.id] = filter_
    for tag in {t for _, t, _ in MATCHING_TABLE}:
        found = {by_filter[s.id] for s in await store.matching(tag)}
        assert found == {f for f in by_filter.values() if matches(f, tag)}, tag


async def test_store_roundtrips_and_expires(store: SubscriptionStore) -> None:
    kept = _sub("a.*", "one", device_id="d", properties={"k": "v"}, gms_user="u", language="de")
    short = _sub("a.*", "one")
    await store.add(kept, 60)
    await store.add(short, 0.2)
    assert await store.get(kept.id) == kept
    assert kept.expires_at == pytest.approx(time.time() + 60, abs=2)
    assert {s.id for s in await store.matching("a.b")} == {kept.id, short.id}
    await asyncio.sleep(0.35)
    await store.sweep()
    assert await store.get(short.id) is None
    assert [s.id for s in await store.matching("a.b")] == [kept.id]
    assert await store.delete(short.id) is False
    assert await store.delete_subscriber("one") == 1
    assert await store.matching("a.b") == []
    assert await store.delete_subscriber("one") == 0


async def test_memory_store_sweeps_expired_subscriptions_and_indexes() -> None:
    memory = MemorySubscriptions()
    for n in range(50):
        await memory.add(_sub(f"x.{n}", f"sub{n}"), 0.05)
    await memory.add(_sub("x.keep", "keeper"), 60)
    await asyncio.sleep(0.1)
    assert await memory.sweep() == 50
    assert len(memory) == 1
    assert set(memory._by_filter) == {"x.keep"}
    assert set(memory._by_subscriber) == {"keeper"}


async def test_redis_indexes_expire_with_their_last_member(redis_server: RedisServer) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    redis_store = RedisSubscriptions(redis_server.url, prefix=prefix)
    try:
        await redis_store.add(_sub("a.*", "who"), 0.2)
        await redis_store.add(_sub("a.*", "who"), 0.3)
        raw = redis_server.client()
        # two hashes, one filter set, one subscriber set
        assert len(raw.keys(f"{prefix}:*")) == 4
        ttl = raw.pttl(f"{prefix}:notification:filter:a.*")
        assert 200 < ttl <= 300
        await asyncio.sleep(0.4)
        assert raw.keys(f"{prefix}:*") == []
        raw.close()
    finally:
        await redis_store.close()


# -- N-1..N-3 ------------------------------------------------------------------------------


async def test_subscribe_then_delete_the_subscription(gms: Gms) -> None:
    subscription = await gms.comet("alice", "ors.context.123456")
    assert uuid.UUID(subscription).version == 4
    status, body = await gms.delete(f"{SUBSCRIBE}/{subscription}")
    assert (status, body) == (200, "")
    status, body = await gms.delete(f"{SUBSCRIBE}/{subscription}")
    assert status == 404
    assert body == {
        "message": "Subscription ID not found",
        "exception": NS + "SubscriptionNotFoundException",
    }


async def test_delete_by_subscriber_removes_all_of_its_subscriptions_only(gms: Gms) -> None:
    mine = [await gms.comet("alice", f, subscriberId="A1") for f in ("a.*", "b.c", "a.*")]
    other = await gms.comet("bob", "a.*", subscriberId="B2")
    assert (await gms.delete(f"{SUBSCRIBE}/subscriber/A1")) == (200, "")
    for subscription in mine:
        assert (await gms.delete(f"{SUBSCRIBE}/{subscription}"))[0] == 404
    status, body = await gms.delete(f"{SUBSCRIBE}/subscriber/A1")
    assert status == 404
    assert body == {
        "message": "Subscriber ID not found",
        "exception": NS + "SubscriberNotFoundException",
    }
    assert (await gms.delete(f"{SUBSCRIBE}/{other}"))[0] == 200


async def test_the_documented_subscription_example(gms: Gms, sink: Receiver) -> None:
    """§4.1, made valid JSON: an android (gcm) device, debug connection, provider, language."""
    example: dict[str, Any] = {
        "subscriberId": "A1",
        "providerName": "SalesApp",
        "language": "de",
        "notificationDetails": {
            "deviceId": "9774d56d682e549c",
            "type": "android",
            "properties": {"debug": "true", "k1": "v1"},
        },
        "authorization": "ZGVtbzo=",
        "expire": 30,
        "filter": "ors.context.123456",
    }
    subscription_id = await gms.subscribe(**example)
    stored = await gms.api.store.get(subscription_id)
    assert stored is not None
    assert (stored.type, stored.device_id, stored.provider, stored.language) == (
        "gcm",
        "9774d56d682e549c",
        "SalesApp",
        "de",
    )
    assert stored.properties == {"debug": "true", "k1": "v1"}
    assert stored.authorization == "ZGVtbzo="
    assert stored.expires_at == pytest.approx(time.time() + 30, abs=2)
    assert await gms.publish(tag="ors.context.123456", message="Agent ready") == (200, "")
    [push] = await sink.wait_for(1)
    assert push.path == "/fcm"
    assert push.json() == {"to": "9774d56d682e549c", "data": {"message": "Agent ready"}}


async def test_the_documented_publish_example(gms: Gms, sink: Receiver) -> None:
    """§4.2, made valid JSON: to one subscription, with per-publish APNs attributes."""
    subscription_id = await gms.subscribe(
        subscriberId="ios-user",
        filter="gms.notification.*",
        notificationDetails={"type": "ios", "deviceId": "XXXX"},
    )
    status, body = await gms.publish(
        message="Agent availability",
        tag="gms.notification.agentstatus",
        mediaType="STRING",
        language="en",
        locArgs={"customer.lastname": "Doe"},
        subscriptionId=subscription_id,
        notificationDetails={
            "deviceId": "XXXX",
            "type": "ios",
            "properties": {
                "apple.alertMessage.body": "Agent is available.",
                "apple.badge": 9,
                "apple.sound": "bingbong.aiff",
                "debug": "true",
            },
        },
    )
    assert (status, body) == (200, "")
    [push] = await sink.wait_for(1)
    assert push.path == "/apns-debug/3/device/XXXX"  # properties.debug: the debug connection
    assert push.json() == {
        "aps": {
            "alert": {"title": None, "body": "Agent is available."},
            "badge": 9,
            "sound": "bingbong.aiff",
        },
        "message": "Agent availability",
    }


async def test_the_documented_customhttp_example(make_gms: GmsFactory, sink: Receiver) -> None:
    """§5.1 customhttp: quoted pushEnabled, default expiration, Basic authorization."""
    gms = await make_gms(
        push={"pushEnabled": '"customhttp"', "defaultSubscriptionExpiration": "30"}
    )
    await gms.subscribe(
        subscriberId="c1",
        filter="ors.context.*",
        authorization="ZGVtbzo=",
        notificationDetails={"type": "customhttp", "deviceId": "customer-device-7"},
    )
    assert (await gms.publish(tag="ors.context.42", message="plain"))[0] == 200
    assert (await gms.publish(tag="ors.context.43", message={"k": "v"}))[0] == 200
    first, second = await sink.wait_for(2)
    assert first.path == "/custom"
    assert first.headers["Authorization"] == "Basic ZGVtbzo="
    assert first.headers["Content-Type"] == "application/json"
    assert first.json() == {"message": "plain", "deviceId": "customer-device-7"}
    assert second.json() == {"message": '{"k":"v"}', "deviceId": "customer-device-7"}
    # fcm is not in this pushEnabled: not enabled, 404
    status, body = await gms.post_subscription(
        subscriberId="x", filter="a", notificationDetails={"type": "fcm", "deviceId": "d"}
    )
    assert status == 404
    assert body["exception"] == NS + "NotificationTypeNotEnabledException"


async def test_the_documented_comet_stat_example(gms: Gms) -> None:
    """§5.4: a MAP message reaches the user's session on /_genesys as an object."""
    alice = await gms.user("alice")
    await gms.comet("alice", "stat.*")
    message = {"statValue": "0", "statReferenceId": "1958339548"}
    assert (await gms.publish(tag="stat.update", message=message, mediaType="MAP"))[0] == 200
    [delivery] = await alice.poll()
    assert delivery["channel"] == "/_genesys"
    assert set(delivery["data"]) == {"id", "message", "tag"}
    assert HEX32.match(delivery["data"]["id"])
    assert uuid.UUID(delivery["data"]["id"]).version == 1
    assert delivery["data"]["message"] == message
    assert delivery["data"]["tag"] == "stat.update"


# -- errors ----------------------------------------------------------------------------------


async def test_bodies_must_be_json(gms: Gms) -> None:
    for path in (SUBSCRIBE, PUBLISH):
        for headers in ({"Content-Type": "text/plain"}, {}):
            response = await gms.client.post(path, data=b'{"tag":"a"}', headers=headers)
            assert response.status == 415
            body = await response.json()
            assert body["exception"] == NS + "UnsupportedMediaTypeException"
            assert response.headers["Cache-Control"] == "no-cache, no-store"
        for raw in (b'{"tag": "a",}', b"", b"[1]", b'"x"'):
            response = await gms.client.post(path, data=raw, headers=JSON)
            assert response.status == 400, raw
            assert set(await response.json()) == {"message", "exception"}
    charset = {"Content-Type": "application/json;charset=UTF-8"}
    response = await gms.client.post(PUBLISH, data=b'{"tag":"a"}', headers=charset)
    assert response.status == 200


@pytest.mark.parametrize(
    "body",
    [
        {"filter": "a", "notificationDetails": {"type": "comet"}},
        {"subscriberId": "", "filter": "a", "notificationDetails": {"type": "comet"}},
        {"subscriberId": "s", "notificationDetails": {"type": "comet"}},
        {"subscriberId": "s", "filter": "", "notificationDetails": {"type": "comet"}},
        {"subscriberId": "s", "filter": "ors.", "notificationDetails": {"type": "comet"}},
        {"subscriberId": "s", "filter": "ors.ag*", "notificationDetails": {"type": "comet"}},
        {"subscriberId": "s", "filter": "a.*.b", "notificationDetails": {"type": "comet"}},
        {"subscriberId": "s", "filter": 7, "notificationDetails": {"type": "comet"}},
        {"subscriberId": "s", "filter": "a"},
        {"subscriberId": "s", "filter": "a", "notificationDetails": "comet"},
        {"subscriberId": "s", "filter": "a", "notificationDetails": {"deviceId": "d"}},
        {"subscriberId": "s", "filter": "a", "notificationDetails": {"type": "ios"}},
        {
            "subscriberId": "s",
            "filter": "a",
            "notificationDetails": {"type": "ios", "deviceId": ""},
        },
        {
            "subscriberId": "s",
            "filter": "a",
            "notificationDetails": {"type": "httpcb", "deviceId": "d"},
        },
        {
            "subscriberId": "s",
            "filter": "a",
            "notificationDetails": {"type": "comet", "properties": ["x"]},
        },
        {
            "subscriberId": "s",
            "filter": "a",
            "notificationDetails": {"type": "comet"},
            "language": 3,
        },
    ],
)
async def test_invalid_subscriptions_are_400(gms: Gms, body: dict[str, Any]) -> None:
    status, reply = await gms.post(SUBSCRIBE, body, {"gms_user": "u"})
    assert status == 400, reply
    assert reply["exception"] == NS + "InvalidNotificationRequestException"


async def test_comet_subscriptions_need_a_gms_user(gms: Gms) -> None:
    body = {"subscriberId": "s", "filter": "a", "notificationDetails": {"type": "comet"}}
    status, reply = await gms.post(SUBSCRIBE, body)
    assert status == 400
    assert "gms_user" in reply["message"]
    assert (await gms.post(SUBSCRIBE, body, {"gms_user": "  "}))[0] == 400


@pytest.mark.parametrize(
    ("push_type", "message"),
    [("orscb", "not supported: this server has no ORS"), ("java", "not supported"), ("x", "")],
)
async def test_unsupported_or_unknown_types_are_404(gms: Gms, push_type: str, message: str) -> None:
    details = {"type": push_type, "deviceId": "session-1"}
    status, reply = await gms.post_subscription(
        subscriberId="s", filter="a", notificationDetails=details
    )
    assert status == 404
    assert message in reply["message"]
    assert reply["exception"] == NS + "NotificationTypeNotEnabledException"
    status, reply = await gms.publish(tag="a", message="m", notificationDetails=details)
    assert status == 404


async def test_comet_is_always_enabled(make_gms: GmsFactory) -> None:
    gms = await make_gms(push={"pushEnabled": "fcm"})
    await gms.comet("alice", "a")
    status, _ = await gms.post_subscription(
        subscriberId="s",
        filter="a",
        notificationDetails={"type": "httpcb", "deviceId": "http://h/"},
    )
    assert status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"message": "no tag"},
        {"tag": "", "message": "m"},
        {"tag": "ors.*", "message": "m"},
        {"tag": "a-b", "message": "m"},
        {"tag": "a", "mediaType": "xml"},
        {"tag": "a", "mediaType": 3},
        {"tag": "a", "mediaType": "localizestring", "message": {"id": 1}},
        {"tag": "a", "locArgs": ["x"]},
        {"tag": "a", "notificationDetails": "x"},
        {"tag": "a", "notificationDetails": {"deviceId": "d"}},
        {"tag": "a", "subscriptionId": 5},
        {"tag": "a", "providerName": ["p"]},
    ],
)
async def test_invalid_publishes_are_400(gms: Gms, body: dict[str, Any]) -> None:
    status, reply = await gms.publish(**body)
    assert status == 400, reply
    assert set(reply) == {"message", "exception"}


async def test_publish_to_an_unknown_subscription_is_404(gms: Gms) -> None:
    status, reply = await gms.publish(tag="a", message="m", subscriptionId="nope")
    assert status == 404
    assert reply["exception"] == NS + "SubscriptionNotFoundException"


async def test_only_api_version_1_is_served(gms: Gms) -> None:
    response = await gms.client.post(
        "/genesys/2/notification/publish", data=b'{"tag":"a"}', headers=JSON
    )
    assert response.status == 404


async def test_basic_auth_when_the_notification_flag_is_on(make_gms: GmsFactory) -> None:
    credentials = f"ors:{hash_password('pw', iterations=1000)}"
    gms = await make_gms(auth={"credentials": credentials, "notification": "true"})
    response = await gms.client.post(PUBLISH, json={"tag": "a"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="GMS"'
    response = await gms.client.delete(f"{SUBSCRIBE}/x")
    assert response.status == 401
    token = base64.b64encode(b"ors:pw").decode()
    status, _ = await gms.post(PUBLISH, {"tag": "a"}, {"Authorization": f"Basic {token}"})
    assert status == 200


# -- expiry -----------------------------------------------------------------------------------


async def test_subscriptions_expire(gms: Gms) -> None:
    alice = await gms.user("alice")
    subscription = await gms.comet("alice", "a.*", expire=0.3)
    await gms.publish(tag="a.b", message="before")
    assert [m["data"]["message"] for m in await alice.poll()] == ["before"]
    await asyncio.sleep(0.45)
    assert await gms.publish(tag="a.b", message="after") == (200, "")
    assert await alice.poll() == []
    assert (await gms.delete(f"{SUBSCRIBE}/{subscription}"))[0] == 404
    assert (await gms.delete(f"{SUBSCRIBE}/subscriber/alice"))[0] == 404
    status, _ = await gms.publish(tag="a.b", message="m", subscriptionId=subscription)
    assert status == 404


@pytest.mark.parametrize("expire", [None, 0, -5, "soon", True, [1]])
async def test_missing_or_invalid_expire_uses_the_default(
    make_gms: GmsFactory, expire: Any
) -> None:
    gms = await make_gms(push={"defaultSubscriptionExpiration": "120"})
    body = {} if expire is None else {"expire": expire}
    subscription = await gms.comet("alice", "a", **body)
    stored = await gms.api.store.get(subscription)
    assert stored is not None
    assert stored.expires_at == pytest.approx(time.time() + 120, abs=2)


async def test_numeric_string_expire_and_the_cap(make_gms: GmsFactory) -> None:
    gms = await make_gms(notification={"max-subscription-expiration": "600"})
    for expire, expected in (("45", 45), (10**9, 600)):
        stored = await gms.api.store.get(await gms.comet("alice", "a", expire=expire))
        assert stored is not None
        assert stored.expires_at == pytest.approx(time.time() + expected, abs=2)


# -- publish workflows and matching over HTTP -----------------------------------------------


async def test_fan_out_delivers_to_every_matching_filter(gms: Gms) -> None:
    filters = [f for f, _, _ in MATCHING_TABLE if _ == DOC_TAG]
    users = {}
    for n, filter_ in enumerate(dict.fromkeys(filters)):
        users[filter_] = await gms.user(f"user{n}")
        await gms.comet(f"user{n}", filter_)
    assert await gms.publish(tag=DOC_TAG, message="hello") == (200, "")
    for filter_, user in users.items():
        got = [m["data"]["tag"] for m in await user.poll()]
        assert got == ([DOC_TAG] if matches(filter_, DOC_TAG) else []), filter_


async def test_publish_without_matches_is_200(gms: Gms) -> None:
    assert await gms.publish(tag="nobody.listens", message="m") == (200, "")


async def test_publish_to_one_subscription_ignores_the_others_and_the_filter(gms: Gms) -> None:
    alice, bob = await gms.user("alice"), await gms.user("bob")
    target = await gms.comet("alice", "x.y")
    await gms.comet("bob", "*")
    assert (await gms.publish(tag="other.tag", message="m", subscriptionId=target))[0] == 200
    assert [m["data"]["tag"] for m in await alice.poll()] == ["other.tag"]
    assert await bob.poll() == []


async def test_every_subscription_is_delivered_separately(gms: Gms) -> None:
    alice = await gms.user("alice")
    await gms.comet("alice", "a.*")
    await gms.comet("alice", "a.b")
    await gms.publish(tag="a.b", message="twice")
    deliveries = await alice.poll()
    assert [m["data"]["message"] for m in deliveries] == ["twice", "twice"]
    assert deliveries[0]["data"]["id"] != deliveries[1]["data"]["id"]


async def test_comet_reaches_every_session_of_that_gms_user_only(gms: Gms) -> None:
    alice_web, alice_phone = await gms.user("alice"), await gms.user("alice")
    alice_unsubscribed = await gms.user("alice", subscribe=False)
    bob = await gms.user("bob")
    ext = PipelineClient(gms.bayeux)  # gms_user bound through ext (our extension)
    await ext.handshake(ext={"gms_user": "alice"})
    await ext.connect()
    await gms.comet("alice", "chat.*")
    await gms.comet("carol", "chat.*")  # no session: dropped, not an error
    assert await gms.publish(tag="chat.refresh.1", message="for alice") == (200, "")
    for session in (alice_web, alice_phone, alice_unsubscribed, ext):
        [delivery] = await session.poll()
        assert delivery["channel"] == "/_genesys"
        assert delivery["data"]["message"] == "for alice"
        assert delivery["data"]["tag"] == "chat.refresh.1"
    assert await bob.poll() == []


async def test_direct_publish_to_a_device(gms: Gms, sink: Receiver) -> None:
    details = {"type": "fcm", "deviceId": "token-1", "properties": {"debug": "true"}}
    assert (await gms.publish(tag="direct.one", message="hi", notificationDetails=details))[
        0
    ] == 200
    alice = await gms.user("alice")
    comet = {"type": "comet", "deviceId": "alice"}
    assert (await gms.publish(tag="direct.two", message="yo", notificationDetails=comet))[0] == 200
    [push] = await sink.wait_for(1)
    assert push.json() == {"to": "token-1", "data": {"message": "hi"}}
    [delivery] = await alice.poll()
    assert delivery["data"]["message"] == "yo"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"message": "text"}, "text"),
        ({}, ""),
        ({"message": None}, ""),
        ({"message": {"a": 1}}, {"a": 1}),
        ({"message": {"a": 1}, "mediaType": "STRING"}, '{"a":1}'),
        ({"message": {"a": 1}, "mediaType": "string"}, '{"a":1}'),
        ({"message": '{"a":1}', "mediaType": "json"}, {"a": 1}),
        ({"message": '{"a":1}', "mediaType": "MAP"}, {"a": 1}),
        ({"message": "not json", "mediaType": "Map"}, "not json"),
        ({"message": [1, 2]}, [1, 2]),
        ({"message": "welcome", "mediaType": "LOCALIZE_STRING"}, "welcome"),
        ({"message": "welcome", "mediaType": "localizestring"}, "welcome"),
        ({"message": "welcome", "mediaType": "localize_string"}, "welcome"),
    ],
)
async def test_media_types_are_normalised(gms: Gms, body: dict[str, Any], expected: Any) -> None:
    alice = await gms.user("alice")
    await gms.comet("alice", "m")
    assert (await gms.publish(tag="m", **body))[0] == 200
    [delivery] = await alice.poll()
    assert delivery["data"]["message"] == expected


async def test_localized_messages_use_each_subscriptions_language(
    make_gms: GmsFactory, tmp_path: Path, sink: Receiver
) -> None:
    path = tmp_path / "loc.xml"
    path.write_text(
        """<messages><message id="welcomeArgs">
        <locale language="de"><entry key="text">Sehr geehrter Kunde $customer.lastname,
wie können Sie daran erinnert werden</entry></locale>
        <locale language="en_US"><entry key="text">Dear $customer.lastname</entry></locale>
        </message></messages>""",
        encoding="utf-8",
    )
    gms = await make_gms(push={"localization_file": str(path)})
    sessions = {user: await gms.user(user) for user in ("de", "en", "none", "fr")}
    for user in sessions:
        await gms.comet(user, "loc.*", **({} if user == "none" else {"language": user}))
    await gms.subscribe(
        subscriberId="cb",
        filter="loc.*",
        language="de_DE",
        notificationDetails={"type": "httpcb", "deviceId": f"{sink.url}/loc"},
    )
    status, _ = await gms.publish(
        tag="loc.greeting",
        message="welcomeArgs",
        mediaType="localizestring",
        locArgs={"customer": {"lastname": "Doe"}},
    )
    assert status == 200
    texts = {user: (await s.poll())[0]["data"]["message"] for user, s in sessions.items()}
    assert texts == {
        "de": "Sehr geehrter Kunde Doe, wie können Sie daran erinnert werden",
        "en": "Dear Doe",
        "none": "welcomeArgs",  # no language: a normal message
        "fr": "Dear Doe",  # the default language, en_US
    }
    [callback] = await sink.wait_for(1)
    assert callback.body.decode() == "Sehr geehrter Kunde Doe, wie können Sie daran erinnert werden"
    # straight to a device: the publish's language
    direct = {"type": "comet", "deviceId": "de"}
    await gms.publish(
        tag="loc.direct",
        message="welcomeArgs",
        mediaType="LOCALIZE_STRING",
        language="en_US",
        locArgs={"customer.lastname": "Roe"},
        notificationDetails=direct,
    )
    assert (await sessions["de"].poll())[0]["data"]["message"] == "Dear Roe"


# -- delivery types ---------------------------------------------------------------------------


async def test_httpcb_posts_text_or_json_with_authorization(gms: Gms, sink: Receiver) -> None:
    await gms.subscribe(
        subscriberId="cb",
        filter="cb.*",
        notificationDetails={
            "type": "httpcb",
            "deviceId": f" {sink.url}/hook/1",  # the doc's sample has a leading space
            "properties": {"authorization": "dXNlcjpwdw=="},
        },
    )
    await gms.publish(tag="cb.text", message="plain text")
    await gms.publish(tag="cb.json", message={"a": [1]})
    text, json_ = await sink.wait_for(2)
    assert (text.path, text.body) == ("/hook/1", b"plain text")
    assert text.headers["Content-Type"].startswith("text/plain")
    assert text.headers["Authorization"] == "Basic dXNlcjpwdw=="
    assert json_.headers["Content-Type"] == "application/json"
    assert json_.json() == {"a": [1]}


async def test_fcm_with_event_level_texts_and_provider(
    make_gms: GmsFactory, sink: Receiver
) -> None:
    gms = await make_gms(
        **{
            "push.provider.SalesApp": {"fcm.url": f"{sink.url}/sales-fcm"},
            "push.provider.SalesApp.event.ors.agent": {"fcm.title": "Agent", "fcm.body": "Ready"},
        }
    )
    await gms.subscribe(
        subscriberId="f",
        filter="ors.*",
        providerName="SalesApp",
        notificationDetails={"type": "fcm", "deviceId": "reg-1"},
    )
    await gms.publish(tag="ors.agent.available", message={"agent": "x"})
    [push] = await sink.wait_for(1)
    assert push.path == "/sales-fcm"
    assert push.headers["Authorization"] == "key=server-key"
    assert push.json() == {
        "to": "reg-1",
        "data": {"message": '{"agent":"x"}'},
        "notification": {"title": "Agent", "body": "Ready"},
    }


async def test_ios_uses_configured_texts(make_gms: GmsFactory, sink: Receiver) -> None:
    gms = await make_gms(
        **{"push.provider.event.svc": {"apple.title": "T", "apple.alertMessage.body": "B"}}
    )
    await gms.subscribe(
        subscriberId="i",
        filter="svc.*",
        notificationDetails={"type": "ios", "deviceId": "tok", "properties": {"apple.badge": 2}},
    )
    await gms.publish(tag="svc.x", message="m")
    [push] = await sink.wait_for(1)
    assert push.json() == {
        "aps": {"alert": {"title": "T", "body": "B"}, "badge": 2},
        "message": "m",
    }


async def test_wns_posts_a_raw_notification(gms: Gms, sink: Receiver) -> None:
    channel = "https://db5.notify.windows.com/?token=abc"
    await gms.subscribe(
        subscriberId="w", filter="w", notificationDetails={"type": "wns", "deviceId": channel}
    )
    await gms.publish(tag="w", message="raw text")
    [push] = await sink.wait_for(1)
    assert push.path == "/wns"
    assert push.headers["X-WNS-Type"] == "wns/raw"
    assert push.headers["X-WNS-Channel-Uri"] == channel
    assert push.body == b"raw text"


# -- failures ---------------------------------------------------------------------------------


async def test_a_failed_single_delivery_is_503(gms: Gms, sink: Receiver) -> None:
    dead = f"http://127.0.0.1:{free_port()}/gone"
    details = {"type": "httpcb", "deviceId": dead}
    status, body = await gms.publish(tag="a", message="m", notificationDetails=details)
    assert status == 503
    assert body["exception"] == NS + "NotificationDeliveryException"
    subscription = await gms.subscribe(
        subscriberId="s", filter="a", notificationDetails={"type": "customhttp", "deviceId": "d"}
    )
    sink.statuses = [500]
    status, body = await gms.publish(tag="a", message="m", subscriptionId=subscription)
    assert status == 503
    assert "HTTP 500" in body["message"]


@pytest.mark.parametrize(("configured", "expected"), [(None, 503), ("503", 503), ("200", 200)])
async def test_fan_out_attempts_every_delivery_and_reports_failures(
    make_gms: GmsFactory, sink: Receiver, configured: str | None, expected: int
) -> None:
    notification = {} if configured is None else {"fanout-failure-status": configured}
    gms = await make_gms(notification=notification)
    alice = await gms.user("alice")
    await gms.comet("alice", "f.*")
    dead = f"http://127.0.0.1:{free_port()}/gone"
    await gms.subscribe(
        subscriberId="dead", filter="f.*", notificationDetails={"type": "httpcb", "deviceId": dead}
    )
    await gms.subscribe(
        subscriberId="ok",
        filter="f.*",
        notificationDetails={"type": "httpcb", "deviceId": f"{sink.url}/ok"},
    )
    status, body = await gms.publish(tag="f.x", message="m")
    assert status == expected
    if expected == 503:
        assert body["exception"] == NS + "NotificationDeliveryException"
        assert body["message"].startswith("1 of 3 deliveries failed")
    assert [r.path for r in await sink.wait_for(1)] == ["/ok"]
    assert len(await alice.poll()) == 1


async def test_failed_deliveries_are_retried(make_gms: GmsFactory, sink: Receiver) -> None:
    gms = await make_gms(notification={"delivery-retries": "1"})
    sink.statuses = [502]
    details = {"type": "customhttp", "deviceId": "d"}
    assert (await gms.publish(tag="a", message="m", notificationDetails=details))[0] == 200
    assert len(await sink.wait_for(2)) == 2


async def test_an_unreachable_store_is_503() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = ChatConfig(sections={"notification": {"store": dead}})
    async with TestClient(TestServer(create_app(config=config))) as client:
        body = {"subscriberId": "s", "filter": "a", "notificationDetails": {"type": "comet"}}
        response = await client.post(SUBSCRIBE, json=body, headers={"gms_user": "u"})
        assert response.status == 503
        reply = await response.json()
        assert reply["exception"] == NS + "SubscriptionStoreUnavailableException"
        response = await client.post(PUBLISH, json={"tag": "a"})
        assert response.status == 503


# -- fan-out at scale -------------------------------------------------------------------------


async def test_fan_out_to_a_thousand_comet_subscribers(gms: Gms) -> None:
    count = 1000
    users = [f"user-{n}" for n in range(count)]
    sessions = [await gms.user(user) for user in users]
    slots = asyncio.Semaphore(50)

    async def subscribe(user: str) -> str:
        async with slots:
            return await gms.comet(user, "broadcast.*")

    await asyncio.gather(*(subscribe(user) for user in users))
    started = time.perf_counter()
    assert await gms.publish(tag="broadcast.news", message="to everyone") == (200, "")
    elapsed = time.perf_counter() - started
    print(f"\nfan-out to {count} comet subscribers: {elapsed * 1000:.0f} ms")
    ids = set()
    for session in sessions:
        [delivery] = await session.poll()  # exactly one each
        assert delivery["data"]["message"] == "to everyone"
        ids.add(delivery["data"]["id"])
    assert len(ids) == count
