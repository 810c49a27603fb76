"""GMS Notification API: `/genesys/1/notification/...`.

* `POST subscription`: subscribe a target (a comet user, a callback URL, a device) to the
  events whose tag matches a filter; `{"id": ...}`.
* `DELETE subscription/{id}` and `DELETE subscription/subscriber/{subscriberId}`.
* `POST publish`: deliver an event to one subscription (`subscriptionId`), straight to one
  device (`notificationDetails.deviceId`), or to every live subscription whose filter
  matches its `tag`.

Delivery types: `comet` (a `/_genesys` message `{"id", "message", "tag"}` to every CometD
session of the subscriber's `gms_user`, on any node), `httpcb`, `customhttp`, `fcm`/`gcm`,
`ios` and `wns` (HTTP pushes, through PushService). `orscb` needs an ORS and `java` is not
documented: both are refused like a type that is not enabled (404). A publish straight to a
`comet` "device" names the target gms_user in `deviceId`. Deliveries use the subscription's
`providerName` (else the publish's) for `push.provider.<P>` options, resolved along the
event-level chain for the tag; `properties.debug = true|debug` selects the provider's debug
connection and logs that delivery at INFO.

Bodies are JSON (`application/json`, else 415). Errors have GMS's body,
`{"message": ..., "exception": ...}`; the doc names the not-found exceptions, the others are
ours. A failed delivery gives 503 (`NotificationDeliveryException`); for a fan-out publish
`[notification] fanout-failure-status = 200` reports partial failures as success.

`[notification]` options (also accepted with a `notification.` prefix):
`fanout-failure-status` (503), `store` (`memory`, `redis`, a Redis URL; default: Redis when
the Bayeux engine is, else memory), `redis-prefix` (`gms`), `delivery-retries` (3),
`delivery-concurrency` (64), `max-subscription-expiration` (seconds, one year),
`sweep-interval` (seconds, 30). `[push] defaultSubscriptionExpiration` (30) is the lifetime
of subscriptions that give no valid `expire`; `[push] localization_file` holds the texts of
`localizestring` events (see chat/localization.py). Basic auth guards every route when
`[auth] notification = true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from bayeux import BayeuxServer
from bayeux.engine import EngineUnavailable
from bayeux.redis_engine import RedisEngine

from .auth import BasicAuth, protected
from .config import ChatConfig
from .gms_user import notify_gms_user
from .localization import Localizer
from .notification import (
    MemorySubscriptions,
    RedisSubscriptions,
    Subscription,
    SubscriptionStore,
    valid_filter,
    valid_tag,
)
from .push import PushError, PushMessage, PushService, is_http_url, resolve_options
from .store import StoreUnavailable

log = logging.getLogger("gms.notification")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BASE = "/genesys/1/notification"
_EXCEPTIONS = "com.genesyslab.gsg.services.notification."
SUBSCRIPTION_NOT_FOUND = _EXCEPTIONS + "SubscriptionNotFoundException"
SUBSCRIBER_NOT_FOUND = _EXCEPTIONS + "SubscriberNotFoundException"
DELIVERY_FAILED = _EXCEPTIONS + "NotificationDeliveryException"
# Not named by the doc: our own, in the same family.
BAD_REQUEST = _EXCEPTIONS + "InvalidNotificationRequestException"
TYPE_NOT_ENABLED = _EXCEPTIONS + "NotificationTypeNotEnabledException"
UNSUPPORTED_MEDIA = _EXCEPTIONS + "UnsupportedMediaTypeException"
STORE_UNAVAILABLE = _EXCEPTIONS + "SubscriptionStoreUnavailableException"

DEFAULT_EXPIRATION_S = 30.0
DELIVERY_TYPES = ("comet", "httpcb", "customhttp", "fcm", "gcm", "ios", "wns")
UNSUPPORTED_TYPES = {
    "orscb": "Notification type 'orscb' is not supported: this server has no ORS to deliver "
    "events to",
    "java": "Notification type 'java' is not supported",
}
STRING, LOCALIZE, JSON = "STRING", "LOCALIZE", "JSON"
MEDIA_TYPES = {
    "string": STRING,
    "localizestring": LOCALIZE,
    "localize_string": LOCALIZE,
    "localize": LOCALIZE,
    "json": JSON,
    "map": JSON,
}


class GmsError(Exception):
    """An API failure, answered as `{"message", "exception"}` with its status."""

    def __init__(self, status: int, message: str, exception: str = BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.exception = exception


@dataclass
class NotificationSettings:
    protected: bool = False
    fanout_failure_status: int = 503
    store: str = ""
    redis_prefix: str = "gms"
    delivery_retries: int = 3
    delivery_concurrency: int = 64
    max_expiration_s: float = 365 * 86_400.0
    sweep_interval_s: float = 30.0

    @classmethod
    def from_sections(cls, sections: Mapping[str, Mapping[str, str]]) -> NotificationSettings:
        section = sections.get("notification", {})

        def option(name: str, default: str) -> str:
            value = section.get(name, section.get(f"notification.{name}"))
            return default if value is None else value.strip()

        settings = cls(
            protected=protected(dict(sections.get("auth", {})), "notification"),
            fanout_failure_status=int(option("fanout-failure-status", "503")),
            store=option("store", ""),
            redis_prefix=option("redis-prefix", "gms"),
            delivery_retries=int(option("delivery-retries", "3")),
            delivery_concurrency=int(option("delivery-concurrency", "64")),
            max_expiration_s=float(option("max-subscription-expiration", str(365 * 86_400))),
            sweep_interval_s=float(option("sweep-interval", "30")),
        )
        if settings.fanout_failure_status not in (200, 503):
            raise ValueError("[notification] fanout-failure-status: expected 503 or 200")
        if settings.delivery_concurrency < 1 or settings.delivery_retries < 0:
            raise ValueError("[notification] delivery-concurrency >= 1, delivery-retries >= 0")
        return settings


@dataclass
class Target:
    """Delivery details given with a publish (`notificationDetails`) or a subscription."""

    type: str | None = None
    device_id: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    authorization: str | None = None


@dataclass
class Event:
    tag: str
    message: Any
    """A string, or (JSON media) any JSON value."""
    media: str
    language: str | None = None
    loc_args: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    subscription_id: str | None = None
    target: Target | None = None


class NotificationApi:
    def __init__(
        self,
        store: SubscriptionStore,
        push: PushService,
        bayeux: BayeuxServer,
        localizer: Localizer,
        settings: NotificationSettings,
        auth: BasicAuth,
    ) -> None:
        self.store = store
        self.push = push
        self.bayeux = bayeux
        self.localizer = localizer
        self.settings = settings
        self.auth = auth
        self._slots = asyncio.Semaphore(settings.delivery_concurrency)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(BASE + "/subscription", self.subscribe),
            web.delete(BASE + "/subscription/subscriber/{subscriber_id}", self.unsubscribe_all),
            web.delete(BASE + "/subscription/{subscription_id}", self.unsubscribe),
            web.post(BASE + "/publish", self.publish),
        ]

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        await self.store.start()
        sweeper = asyncio.create_task(self._sweep_forever(), name="notification-sweeper")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await self.push.close()
        await self.store.close()

    # -- handlers ------------------------------------------------------------------------
    async def subscribe(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        subscriber = _text(body.get("subscriberId"))
        if not subscriber:
            raise GmsError(400, "subscriberId is required")
        filter_ = body.get("filter")
        if not valid_filter(filter_):
            raise GmsError(400, f"Invalid filter: {filter_!r}")
        assert isinstance(filter_, str)
        details = body.get("notificationDetails")
        if not isinstance(details, dict):
            raise GmsError(400, "notificationDetails is required")
        target = _target(details, body)
        if target.type is None:
            raise GmsError(400, "notificationDetails.type is required")
        provider = _optional_text(body.get("providerName"), "providerName")
        self._check_type(target.type, provider)
        if provider and not self._known_provider(provider):
            log.warning("subscription for push provider %r, which is not configured", provider)
        gms_user = (request.headers.get("gms_user") or "").strip() or None
        if target.type == "comet" and gms_user is None:
            raise GmsError(400, "The gms_user header is required for a comet subscription")
        if target.type != "comet" and not target.device_id:
            raise GmsError(400, "notificationDetails.deviceId is required")
        if target.type == "httpcb" and not is_http_url(target.device_id):
            raise GmsError(400, "An httpcb deviceId must be an http(s) callback URL")
        subscription = Subscription(
            id=str(uuid.uuid4()),
            subscriber_id=subscriber,
            filter=filter_,
            type=target.type,
            device_id=target.device_id or "",
            properties=target.properties,
            provider=provider,
            language=_optional_text(body.get("language"), "language"),
            authorization=target.authorization,
            gms_user=gms_user,
        )
        await self._call(self.store.add(subscription, self._lifetime(body.get("expire"), provider)))
        return web.json_response({"id": subscription.id})

    async def unsubscribe(self, request: web.Request) -> web.Response:
        if not await self._call(self.store.delete(request.match_info["subscription_id"])):
            raise GmsError(404, "Subscription ID not found", SUBSCRIPTION_NOT_FOUND)
        return web.Response()

    async def unsubscribe_all(self, request: web.Request) -> web.Response:
        subscriber = request.match_info["subscriber_id"]
        if not await self._call(self.store.delete_subscriber(subscriber)):
            raise GmsError(404, "Subscriber ID not found", SUBSCRIBER_NOT_FOUND)
        return web.Response()

    async def publish(self, request: web.Request) -> web.Response:
        event = _event(await self._body(request))
        log.debug("publish %s (gms_user %s)", event.tag, request.headers.get("gms_user"))
        if event.subscription_id is not None:
            found = await self._call(self.store.get(event.subscription_id))
            if found is None:
                raise GmsError(404, "Subscription ID not found", SUBSCRIPTION_NOT_FOUND)
            targets, single = [found], True
        elif event.target is not None and event.target.device_id is not None:
            targets, single = [self._direct(event, event.target)], True
        else:
            targets, single = await self._call(self.store.matching(event.tag)), False
        failures = await self.deliver(event, targets)
        if not failures:
            return web.Response()
        if single:
            message = failures[0]
        else:
            message = f"{len(failures)} of {len(targets)} deliveries failed: {failures[0]}"
        log.warning("publish %s: %s", event.tag, message)
        if single or self.settings.fanout_failure_status != 200:
            raise GmsError(503, message, DELIVERY_FAILED)
        return web.Response()

    # -- delivery ------------------------------------------------------------------------
    async def deliver(self, event: Event, targets: list[Subscription]) -> list[str]:
        """Deliver to every target (concurrently, bounded); the reasons of those that failed."""
        if len(targets) == 1:
            results = [await self._deliver(event, targets[0])]
        else:
            results = await asyncio.gather(*(self._bounded(event, t) for t in targets))
        return [reason for reason in results if reason is not None]

    async def _bounded(self, event: Event, target: Subscription) -> str | None:
        async with self._slots:
            return await self._deliver(event, target)

    async def _deliver(self, event: Event, target: Subscription) -> str | None:
        properties = dict(target.properties)
        if event.target is not None:
            properties.update(event.target.properties)
        debug = properties.get("debug", "").lower() in ("true", "debug")
        content = self._content(event, target)
        try:
            if target.type == "comet":
                if not target.gms_user:
                    raise PushError("the comet subscription has no gms_user")
                payload = {"id": uuid.uuid1().hex, "message": content, "tag": event.tag}
                await notify_gms_user(self.bayeux, target.gms_user, payload)
            else:
                provider = target.provider or event.provider
                known = provider if provider and self._known_provider(provider) else None
                push = self._push_message(event.tag, target, content, properties, debug, known)
                await self.push.send(push, known, event.tag)
        except PushError as exc:
            reason = str(exc)
        except EngineUnavailable as exc:  # comet, with Redis unreachable
            reason = f"comet delivery failed: {exc}"
        except Exception as exc:  # a bug, a malformed option...
            log.exception("notification delivery to a %s target failed", target.type)
            reason = f"{target.type} delivery failed: {exc}"
        else:
            if debug:
                log.info("delivered %s to %s %s", event.tag, target.type, _where(target))
            return None
        log.log(
            logging.INFO if debug else logging.DEBUG,
            "%s to %s: %s",
            event.tag,
            _where(target),
            reason,
        )
        return reason

    def _content(self, event: Event, target: Subscription) -> Any:
        if event.media != LOCALIZE:
            return event.message
        if not target.language:  # GMS: handled as a normal message
            return event.message
        return self.localizer.localize(event.message, target.language, event.loc_args)

    def _push_message(
        self,
        tag: str,
        target: Subscription,
        content: Any,
        properties: dict[str, str],
        debug: bool,
        provider: str | None,
    ) -> PushMessage:
        is_json = not isinstance(content, str)
        text = orjson.dumps(content).decode() if is_json else content
        options = resolve_options(self.push.sections, provider, tag)
        title = body = None
        if target.type in ("fcm", "gcm"):
            title, body = options.get("fcm.title"), options.get("fcm.body")
        elif target.type == "ios":
            title = options.get("apple.title")
            body = properties.get("apple.alertMessage.body", options.get("apple.alertMessage.body"))
            if title is None and body is None:
                body = text
        return PushMessage(
            type=target.type,
            device_id=target.device_id,
            message=text,
            title=title,
            body=body,
            debug=debug,
            authorization=target.authorization,
            properties=properties,
            content_type="application/json" if is_json else "text/plain;charset=UTF-8",
        )

    def _direct(self, event: Event, target: Target) -> Subscription:
        """The one-off target of a publish straight to a device (workflow 2)."""
        assert target.type is not None and target.device_id is not None
        self._check_type(target.type, event.provider)
        if target.type == "httpcb" and not is_http_url(target.device_id):
            raise GmsError(400, "An httpcb deviceId must be an http(s) callback URL")
        return Subscription(
            id="",
            subscriber_id="",
            filter=event.tag,
            type=target.type,
            device_id=target.device_id,
            provider=event.provider,
            language=event.language,
            authorization=target.authorization,
            # comet: a device is an end user's CometD sessions, named by the deviceId.
            gms_user=target.device_id if target.type == "comet" else None,
        )

    # -- helpers -------------------------------------------------------------------------
    def _check_type(self, push_type: str, provider: str | None) -> None:
        if push_type == "comet":
            return  # always on: CometD chat depends on it
        if push_type in UNSUPPORTED_TYPES:
            raise GmsError(404, UNSUPPORTED_TYPES[push_type], TYPE_NOT_ENABLED)
        known = provider if provider and self._known_provider(provider) else None
        if push_type not in self.push.providers or not self.push.enabled(push_type, known):
            raise GmsError(404, f"Notification type '{push_type}' is not enabled", TYPE_NOT_ENABLED)

    def _known_provider(self, provider: str) -> bool:
        return f"push.provider.{provider}" in self.push.sections

    def _lifetime(self, expire: object, provider: str | None) -> float:
        known = provider if provider and self._known_provider(provider) else None
        options = resolve_options(self.push.sections, known, None)
        default = _positive(options.get("defaultSubscriptionExpiration")) or DEFAULT_EXPIRATION_S
        return min(_positive(expire) or default, self.settings.max_expiration_s)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise GmsError(415, "Content-Type must be application/json", UNSUPPORTED_MEDIA)
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise GmsError(400, f"Could not read JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise GmsError(400, "The body must be a JSON object")
        return body

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except StoreUnavailable as exc:
            raise GmsError(503, f"subscriptions unavailable: {exc}", STORE_UNAVAILABLE) from exc

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.store.sweep()
            except StoreUnavailable as exc:
                log.warning("subscription sweep failed: %s", exc)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Auth (when `[auth] notification = true`), GMS error bodies, no-cache headers."""
        if not request.path.startswith(BASE + "/"):
            return await handler(request)
        if self.settings.protected:
            await self.auth.require(request)
        try:
            response = await handler(request)
        except GmsError as error:
            body = {"message": error.message, "exception": error.exception}
            response = web.json_response(body, status=error.status)
        response.headers["Cache-Control"] = "no-cache, no-store"
        response.headers["Pragma"] = "no-cache"
        return response


# -- request parsing -------------------------------------------------------------------------
def _event(body: dict[str, Any]) -> Event:
    tag = body.get("tag")
    if not valid_tag(tag):
        raise GmsError(400, f"Invalid tag: {tag!r}")
    assert isinstance(tag, str)
    message = body.get("message")
    if message is None:
        message = ""
    media = _media(body.get("mediaType"), message)
    if media == JSON and isinstance(message, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(message)
    elif media == STRING and not isinstance(message, str):
        message = orjson.dumps(message).decode()
    elif media == LOCALIZE and not isinstance(message, str):
        raise GmsError(400, "A localizestring message is a message id (a string)")
    loc_args = body.get("locArgs")
    if loc_args is not None and not isinstance(loc_args, dict):
        raise GmsError(400, "locArgs must be a JSON object")
    details = body.get("notificationDetails")
    target = None
    if details is not None:
        if not isinstance(details, dict):
            raise GmsError(400, "notificationDetails must be a JSON object")
        target = _target(details, body)
        if target.device_id is not None and target.type is None:
            raise GmsError(400, "notificationDetails.type is required with a deviceId")
    subscription_id = body.get("subscriptionId")
    if subscription_id is not None and not isinstance(subscription_id, str):
        raise GmsError(400, "subscriptionId must be a string")
    return Event(
        tag=tag,
        message=message,
        media=media,
        language=_optional_text(body.get("language"), "language"),
        loc_args=loc_args or {},
        provider=_optional_text(body.get("providerName"), "providerName"),
        subscription_id=subscription_id,
        target=target,
    )


def _media(value: object, message: object) -> str:
    """GMS has two vocabularies (`string/localizestring/json`, `STRING/LOCALIZE_STRING/MAP`);
    without one, a string message is STRING and anything else JSON."""
    if value is None:
        return STRING if isinstance(message, str) else JSON
    media = MEDIA_TYPES.get(value.strip().lower()) if isinstance(value, str) else None
    if media is None:
        raise GmsError(400, f"Unknown mediaType: {value!r}")
    return media


def _target(details: dict[str, Any], body: dict[str, Any]) -> Target:
    raw_type = details.get("type")
    if raw_type is not None and not isinstance(raw_type, str):
        raise GmsError(400, "notificationDetails.type must be a string")
    push_type = raw_type.strip().lower() if raw_type else None
    if push_type == "android":
        push_type = "gcm"
    device = details.get("deviceId")
    if device is not None and not isinstance(device, (str, int)):
        raise GmsError(400, "notificationDetails.deviceId must be a string")
    device_id = str(device).strip() if device is not None else None
    if device_id == "":
        raise GmsError(400, "notificationDetails.deviceId is empty")
    properties = _properties(details.get("properties"))
    authorization = (
        _optional_text(body.get("authorization"), "authorization")
        or _optional_text(details.get("authorization"), "authorization")
        or properties.get("authorization")
        or None
    )
    return Target(push_type or None, device_id, properties, authorization)


def _properties(value: object) -> dict[str, str]:
    """A string map; scalar values (`"apple.badge": 9`) become strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GmsError(400, "notificationDetails.properties must be a JSON object")
    properties: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, str):
            properties[key] = item
        elif isinstance(item, bool):
            properties[key] = "true" if item else "false"
        elif item is not None:
            properties[key] = orjson.dumps(item).decode()
    return properties


def _text(value: object) -> str | None:
    """A non-empty identifier (numbers are read as their text, as Jackson would)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value).strip() or None
    return None


def _optional_text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise GmsError(400, f"{name} must be a string")
    return value.strip() or None


def _positive(value: object) -> float | None:
    """A positive, finite number of seconds (numbers or numeric strings), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if number > 0 and math.isfinite(number) else None


def _where(target: Subscription) -> str:
    if target.type == "comet":
        return f"gms_user {target.gms_user}"
    return f"subscription {target.id}" if target.id else "a device"


# -- wiring ----------------------------------------------------------------------------------
NOTIFICATION_API = web.AppKey("notification_api", NotificationApi)


def make_store(settings: NotificationSettings, bayeux: BayeuxServer) -> SubscriptionStore:
    choice = settings.store
    engine_url = bayeux.engine.url if isinstance(bayeux.engine, RedisEngine) else None
    if choice == "memory" or (choice == "" and engine_url is None):
        return MemorySubscriptions()
    if choice in ("", "redis"):
        if engine_url is None:
            raise ValueError("[notification] store = redis needs a URL (or a Redis engine)")
        return RedisSubscriptions(engine_url, settings.redis_prefix)
    if choice.startswith(("redis://", "rediss://", "unix://")):
        return RedisSubscriptions(choice, settings.redis_prefix)
    raise ValueError(f"[notification] store: expected memory, redis or a Redis URL: {choice!r}")


def setup(
    app: web.Application,
    bayeux: BayeuxServer,
    config: ChatConfig,
    store: SubscriptionStore | None = None,
) -> NotificationApi:
    """Serve the Notification API in `app`, delivering comet notifications through `bayeux`."""
    sections = config.sections
    settings = NotificationSettings.from_sections(sections)
    push = PushService(sections, retries=settings.delivery_retries)
    api = NotificationApi(
        store or make_store(settings, bayeux),
        push,
        bayeux,
        Localizer.from_sections(sections),
        settings,
        BasicAuth.from_section(sections.get("auth", {})),
    )
    app.middlewares.append(api.middleware)
    app.add_routes(api.routes())
    app.cleanup_ctx.append(api.lifecycle)
    app[NOTIFICATION_API] = api
    return api
