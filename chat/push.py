"""Push delivery: one interface, a provider per delivery type (GMS `[push]` configuration).

Types: `customhttp` (JSON POST to a configured URL, sequential per URL), `httpcb` (POST the
message to the callback URL the subscriber gave), `fcm` and `ios` (JSON POST to a
configurable endpoint, so tests and private gateways can stand in for Google and Apple).
Options come from `[push]` and `[push.provider.<name>]` sections; event-level sections
override titles and bodies along GMS's resolution chain. Credentials are never logged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

log = logging.getLogger("gms.push")

DEFAULT_ENABLED = ("comet", "httpcb", "orscb")
FCM_DEFAULT_URL = "https://fcm.googleapis.com/fcm/send"
APNS_DEFAULT_URL = "https://api.push.apple.com"
APNS_DEBUG_URL = "https://api.sandbox.push.apple.com"


class PushError(Exception):
    """A push could not be delivered (after retries)."""


@dataclass
class PushMessage:
    type: str
    device_id: str
    message: str
    """The payload apps read (`message` key): a JSON string or plain text."""
    title: str | None = None
    body: str | None = None
    debug: bool = False
    authorization: str | None = None
    """customhttp: the subscriber's credentials, sent as `Authorization: Basic <value>`."""
    properties: dict[str, str] = field(default_factory=dict)
    """Per-publish OS attributes (e.g. `apple.badge`, `apple.sound`)."""
    content_type: str = "text/plain;charset=UTF-8"
    """For `httpcb`: `application/json` when the message is a serialised JSON value."""


class Provider(Protocol):
    async def send(self, push: PushMessage, options: dict[str, str]) -> None: ...


def parse_enabled(value: str | None) -> tuple[str, ...]:
    """`pushEnabled = "ios,fcm"` -> ("ios", "fcm"); `android` is `gcm`."""
    if value is None:
        return DEFAULT_ENABLED
    names = [part.strip().strip('"').strip() for part in value.strip().strip('"').split(",")]
    return tuple("gcm" if name == "android" else name for name in names if name)


def resolve_options(
    sections: dict[str, dict[str, str]], provider: str | None, event_key: str | None
) -> dict[str, str]:
    """GMS's resolution chain: `[push]`, then `push.provider.event[.<prefix>...]`, then the
    provider's own section and `push.provider.<P>.event[.<prefix>...]`; later sections
    override earlier ones key by key."""
    chain = ["push", "push.provider.event"]
    prefixes = _dotted_prefixes(event_key)
    chain += [f"push.provider.event.{prefix}" for prefix in prefixes]
    if provider:
        chain += [f"push.provider.{provider}", f"push.provider.{provider}.event"]
        chain += [f"push.provider.{provider}.event.{prefix}" for prefix in prefixes]
    options: dict[str, str] = {}
    for name in chain:
        options.update(sections.get(name, {}))
    return options


def _dotted_prefixes(key: str | None) -> list[str]:
    if not key:
        return []
    parts = key.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


class PushService:
    """Sends pushes through the provider of each type, honouring `pushEnabled`."""

    def __init__(self, sections: dict[str, dict[str, str]], retries: int = 3) -> None:
        self.sections = sections
        self.retries = retries
        self._session: aiohttp.ClientSession | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.providers: dict[str, Provider] = {
            "customhttp": CustomHttpProvider(self),
            "httpcb": HttpCallbackProvider(self),
            "fcm": FcmProvider(self),
            "gcm": FcmProvider(self),
            "ios": ApnsProvider(self),
            "wns": WnsProvider(self),
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def enabled(self, push_type: str, provider: str | None = None) -> bool:
        options = resolve_options(self.sections, provider, None)
        return push_type in parse_enabled(options.get("pushEnabled"))

    def options(self, provider: str | None, event_key: str | None) -> dict[str, str]:
        known = provider and f"push.provider.{provider}" in self.sections
        if provider and not known:
            log.warning("push provider %r is not configured; using [push]", provider)
        return resolve_options(self.sections, provider if known else None, event_key)

    async def send(
        self, push: PushMessage, provider: str | None = None, event_key: str | None = None
    ) -> None:
        """Deliver one push, retrying transient failures with backoff; PushError at the end."""
        sender = self.providers.get(push.type)
        if sender is None or not self.enabled(push.type, provider):
            raise PushError(f"push type {push.type!r} is not enabled")
        options = self.options(provider, event_key)
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                await sender.send(push, options)
                return
            except (aiohttp.ClientError, TimeoutError, PushError) as exc:
                if attempt == self.retries:
                    raise PushError(f"{push.type} push failed: {exc}") from exc
                await asyncio.sleep(delay)
                delay *= 2

    # -- shared by providers -------------------------------------------------------------
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=10)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def lock(self, key: str) -> asyncio.Lock:
        """One lock per target URL: customhttp requests are sent one after the other."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        async with self.http().post(url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                raise PushError(f"HTTP {response.status} from the push endpoint")


TEXT_OPTIONS = {
    "fcm": ("fcm.title", "fcm.body"),
    "gcm": ("fcm.title", "fcm.body"),
    "ios": ("apple.title", "apple.alertMessage.body"),
}


def texts(
    options: dict[str, str], push_type: str, title: str, body: str, name: str
) -> tuple[str, str]:
    """Title and body: the configured ones for this type (event-level sections included),
    else the defaults; `%s` becomes `name` (the sender) in both."""
    title_key, body_key = TEXT_OPTIONS.get(push_type, ("title", "body"))
    title = options.get(title_key, options.get("title", title))
    body = options.get(body_key, options.get("body", body))
    return title.replace("%s", name), body.replace("%s", name)


def secret(
    options: dict[str, str], key: str, debug: bool, sections: dict[str, dict[str, str]]
) -> str:
    """A credential: `<key>` (`debug.<key>` for debug pushes), or else the `password` of the
    section that `fcm = <section>` / `debug-fcm = <section>` names (GMS keeps sensitive
    values in such sections)."""
    value = options.get(f"debug.{key}" if debug else key)
    if value:
        return value
    reference = options.get(("debug-" if debug else "") + key.split(".")[0])
    return sections.get(reference, {}).get("password", "") if reference else ""


class CustomHttpProvider:
    def __init__(self, service: PushService) -> None:
        self.service = service

    async def send(self, push: PushMessage, options: dict[str, str]) -> None:
        url = options.get("customhttp.url")
        if not url:
            raise PushError("customhttp.url is not configured")
        headers = {"Content-Type": "application/json"}
        if push.authorization:
            headers["Authorization"] = f"Basic {push.authorization}"
        body = orjson.dumps({"message": push.message, "deviceId": push.device_id})
        async with self.service.lock(url):
            await self.service.post(url, body, headers)


class HttpCallbackProvider:
    """`httpcb`: POST the message to the subscriber's callback URL (the device id), as
    text, or as JSON for a JSON message; the subscriber's `authorization` as Basic."""

    def __init__(self, service: PushService) -> None:
        self.service = service

    async def send(self, push: PushMessage, options: dict[str, str]) -> None:
        url = push.device_id.strip()
        if not is_http_url(url):
            raise PushError("an httpcb device id must be an http(s) URL")
        headers = {"Content-Type": push.content_type}
        if push.authorization:
            headers["Authorization"] = f"Basic {push.authorization}"
        await self.service.post(url, push.message.encode(), headers)


class WnsProvider:
    """`wns`: a raw WNS notification (`X-WNS-Type: wns/raw`) with the message as its body.

    It goes to `wns.url` (`debug.wns.url` for debug pushes) when configured, a gateway or a
    test endpoint, with the channel URI in `X-WNS-Channel-Uri`; else to the channel URI (the
    device id) itself, with `wns.accessToken` (or the `password` of the section `wns = ...`
    names) as a bearer token. Obtaining that token from the package SID and secret (OAuth)
    is not done here.
    """

    def __init__(self, service: PushService) -> None:
        self.service = service

    async def send(self, push: PushMessage, options: dict[str, str]) -> None:
        gateway = options.get("debug.wns.url" if push.debug else "wns.url") or options.get(
            "wns.url"
        )
        url = gateway or push.device_id
        if not is_http_url(url):
            raise PushError("wns needs wns.url or an http(s) channel URI as device id")
        headers = {"Content-Type": "application/octet-stream", "X-WNS-Type": "wns/raw"}
        if gateway:
            headers["X-WNS-Channel-Uri"] = push.device_id
        token = secret(options, "wns.accessToken", push.debug, self.service.sections)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        await self.service.post(url, push.message.encode(), headers)


def is_http_url(value: str | None) -> bool:
    return bool(value) and str(value).strip().startswith(("http://", "https://"))


class FcmProvider:
    """FCM's HTTP JSON shape: a notification (title, body) plus data `{message}`."""

    def __init__(self, service: PushService) -> None:
        self.service = service

    async def send(self, push: PushMessage, options: dict[str, str]) -> None:
        url = options.get("debug.fcm.url" if push.debug else "fcm.url") or options.get(
            "fcm.url", FCM_DEFAULT_URL
        )
        key = secret(options, "fcm.apiKey", push.debug, self.service.sections)
        payload: dict[str, Any] = {"to": push.device_id, "data": {"message": push.message}}
        if push.title is not None or push.body is not None:
            payload["notification"] = {"title": push.title, "body": push.body}
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"key={key}"
        await self.service.post(url, orjson.dumps(payload), headers)


class ApnsProvider:
    """APNs provider API shape (`POST /3/device/<token>`, `aps.alert` plus `message`).

    Apple requires HTTP/2; this provider speaks HTTP/1.1 to the configured `apple.url`, which
    suits an HTTP/2-terminating gateway or a test receiver. Auth: `apple.token` (a provider
    JWT) as a bearer token when configured.
    """

    def __init__(self, service: PushService) -> None:
        self.service = service

    async def send(self, push: PushMessage, options: dict[str, str]) -> None:
        default = APNS_DEBUG_URL if push.debug else APNS_DEFAULT_URL
        base = options.get("debug.apple.url" if push.debug else "apple.url") or default
        aps: dict[str, Any] = {"alert": {"title": push.title, "body": push.body}}
        for key, target in (("apple.badge", "badge"), ("apple.sound", "sound")):
            value = push.properties.get(key) or options.get(key)
            if value is not None:
                aps[target] = int(value) if target == "badge" and value.isdigit() else value
        headers = {"Content-Type": "application/json"}
        token = secret(options, "apple.token", push.debug, self.service.sections)
        if token:
            headers["Authorization"] = f"bearer {token}"
        if options.get("apple.topic"):
            headers["apns-topic"] = options["apple.topic"]
        url = f"{base.rstrip('/')}/3/device/{push.device_id}"
        await self.service.post(url, orjson.dumps({"aps": aps, "message": push.message}), headers)
