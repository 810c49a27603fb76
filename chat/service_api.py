"""GMS Service API: `/genesys/1/service/{service}` creates a service session, and
`/genesys/1/service/{id}/storage…` keeps its business data (spec-gms-core §7).

A service session has an id (`_id`), the name of the configured service it runs, the
`gms_user` that created it, and, when the request carried business data (parameters whose
name does not start with `_`), a data area (`_data_id`). Chat API v1 (chat_v1.py) starts a
chat on a service session; the session then also names that chat.

Services are the built-in `request-chat` and every `[service.<name>]` (or `[Service.<name>]`)
section of the configuration. Their options: `_ttl` (seconds the session and its data are
kept, default 3600), `_chat_service` (the `[chat.<service>]` its chats run on), and the chat
v1 background options read by chat_v1_cometd.py.

Sessions and data live in a `StorageBackend` of their own (memory, or Redis with `--redis`),
so every node of a cluster sees them and the Storage API never does.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import BodyPartReader, hdrs, web

from .chat_v2_rest import Form, Refused, json_response, read_form
from .config import ChatConfig
from .storage import StorageArea, StorageBackend, StoredFile, Value
from .storage_api import StorageSettings
from .store import StoreUnavailable

T = TypeVar("T")

ROOT = "/genesys/1/service"
BUILTIN_CHAT = "request-chat"
DEFAULT_TTL_S = 3600
CHAT_TTL_S = 86_400
"""How long a session is kept once a chat runs on it (chats outlive the business-data TTL)."""
USER_CHAT_TTL_S = 86_400
JSON_TYPE = "application/json"
NOT_FOUND_EXCEPTION = "com.genesyslab.gsg.services.service.ServiceNotFoundException"
BAD_REQUEST_EXCEPTION = "com.genesyslab.gsg.services.service.BadRequestException"
UNAVAILABLE_EXCEPTION = "com.genesyslab.gsg.services.service.ServiceUnavailableException"
CONFLICT_EXCEPTION = "com.genesyslab.gsg.services.service.ServiceConflictException"
EXCEPTIONS = {
    400: BAD_REQUEST_EXCEPTION,
    404: NOT_FOUND_EXCEPTION,
    409: CONFLICT_EXCEPTION,
    503: UNAVAILABLE_EXCEPTION,
}
"""The exception class GMS's error body names, by status (415 and GMS's JSON 500 name none)."""
SECTION_PREFIXES = ("service.", "Service.")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServiceError(Exception):
    """A GMS-style failure: `{"message", "exception"}` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.exception = EXCEPTIONS.get(status)

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message}
        if self.exception is not None:
            body["exception"] = self.exception
        return json_response(body, self.status)


def not_found(message: str) -> ServiceError:
    return ServiceError(404, message)


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


# -- configuration -----------------------------------------------------------------------------


def service_sections(config: ChatConfig) -> dict[str, dict[str, str]]:
    """Every configured service by name (its section's options); `request-chat` always."""
    services: dict[str, dict[str, str]] = {BUILTIN_CHAT: {}}
    for section, options in config.sections.items():
        for prefix in SECTION_PREFIXES:
            if section.startswith(prefix) and len(section) > len(prefix):
                services[section[len(prefix) :]] = options
    return services


def chat_service_of(config: ChatConfig, name: str, options: dict[str, str]) -> str:
    """The chat service a GMS service's chats run on: `_chat_service`, else the chat service
    of the same name, else the first one configured."""
    chosen = options.get("_chat_service", "").strip()
    if chosen:
        if config.service(chosen) is None:
            raise ValueError(f"[service.{name}] _chat_service: no [chat.{chosen}] section")
        return chosen
    return name if config.service(name) is not None else next(iter(config.services))


def positive_seconds(raw: str | None, default: int) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        return default
    return value if value > 0 else default


# -- service sessions --------------------------------------------------------------------------


@dataclass
class ServiceRecord:
    id: str
    name: str
    gms_user: str | None
    ttl_s: int
    data_id: str | None = None
    chat_id: str | None = None

    def values(self) -> dict[str, Value]:
        values: dict[str, Value] = {"name": self.name, "ttl": str(self.ttl_s)}
        if self.data_id:
            values["data_id"] = self.data_id
        if self.chat_id:
            values["chat_id"] = self.chat_id
        return values

    @classmethod
    def from_area(cls, area: StorageArea) -> ServiceRecord:
        text = {k: v for k, v in area.values.items() if isinstance(v, str)}
        return cls(
            id=area.id,
            name=text.get("name", ""),
            gms_user=area.owner,
            ttl_s=positive_seconds(text.get("ttl"), DEFAULT_TTL_S),
            data_id=text.get("data_id"),
            chat_id=text.get("chat_id"),
        )


class ServiceSessions:
    """Service sessions, their data areas, and each `gms_user`'s current chat v1 chat (the
    one `/meta/disconnect` and `/meta/connect` `ext.transcriptPosition` refer to)."""

    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend

    async def create(
        self, name: str, gms_user: str | None, ttl_s: int, data: dict[str, Value]
    ) -> ServiceRecord:
        record = ServiceRecord(str(uuid.uuid4()), name, gms_user, ttl_s)
        if data:
            record.data_id = str(uuid.uuid4())
            await self._call(self.backend.put(record.data_id, gms_user, ttl_s, data, merge=False))
        await self._save(record)
        return record

    async def get(self, service_id: str) -> ServiceRecord:
        area = await self._call(self.backend.get(service_id))
        if area is None or _is_index(service_id):
            raise not_found(f"Service {service_id} not found")
        return ServiceRecord.from_area(area)

    async def claim_chat(self, record: ServiceRecord) -> bool:
        """Reserve the session for starting its chat: of concurrent `ixn/chat` calls, on any
        nodes, exactly one gets True. A node that dies before `attach_chat` leaves the session
        claimed (and chat-less) until it expires."""
        return await self._call(self.backend.set_if_absent(record.id, _CHAT_CLAIM, "1"))

    async def release_chat(self, record: ServiceRecord) -> None:
        """Give the claim back: the chat could not be started."""
        await self._call(self.backend.remove_value(record.id, _CHAT_CLAIM))

    async def attach_chat(self, record: ServiceRecord, chat_id: str) -> None:
        record.chat_id = chat_id
        record.ttl_s = max(record.ttl_s, CHAT_TTL_S)
        await self._save(record)

    async def delete(self, record: ServiceRecord) -> None:
        if record.data_id:
            await self._call(self.backend.delete(record.data_id))
        await self._call(self.backend.delete(record.id))

    async def data(self, record: ServiceRecord) -> dict[str, Value]:
        if not record.data_id:
            return {}
        area = await self._call(self.backend.get(record.data_id))
        return dict(area.values) if area is not None else {}

    async def put_data(self, record: ServiceRecord, values: dict[str, Value]) -> None:
        """Merge into the data area (made on first use); its TTL is the service's."""
        if not record.data_id:
            record.data_id = str(uuid.uuid4())
            await self._save(record)
        put = self.backend.put(record.data_id, record.gms_user, record.ttl_s, values, merge=True)
        await self._call(put)

    async def replace_data(self, record: ServiceRecord, values: dict[str, Value]) -> None:
        if record.data_id:
            put = self.backend.put(
                record.data_id, record.gms_user, record.ttl_s, values, merge=False
            )
            await self._call(put)

    async def set_current_chat(self, gms_user: str, chat_id: str) -> None:
        put = self.backend.put(
            _index_id(gms_user), None, USER_CHAT_TTL_S, {"chat_id": chat_id}, merge=False
        )
        await self._call(put)

    async def current_chat(self, gms_user: str) -> str | None:
        area = await self._call(self.backend.get(_index_id(gms_user)))
        chat_id = area.values.get("chat_id") if area is not None else None
        return chat_id if isinstance(chat_id, str) else None

    async def _save(self, record: ServiceRecord) -> None:
        # Merged: a record read before a concurrent claim or chat start never erases it.
        put = self.backend.put(record.id, record.gms_user, record.ttl_s, record.values(), True)
        await self._call(put)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except StoreUnavailable as exc:
            raise ServiceError(503, f"service storage unavailable: {exc}") from exc


_INDEX_PREFIX = "user:"
_CHAT_CLAIM = "chat_claim"


def _index_id(gms_user: str) -> str:
    return _INDEX_PREFIX + gms_user


def _is_index(area_id: str) -> bool:
    return area_id.startswith(_INDEX_PREFIX)


# -- request bodies ----------------------------------------------------------------------------


async def read_params(request: web.Request, keep_files: bool = False) -> dict[str, Value]:
    """Query string and body merged, the body winning: a flat JSON object (complex values as
    Java would print them), or form fields (urlencoded or multipart; file parts only with
    `keep_files`). Malformed JSON is GMS's 500 `Could not read JSON`; other types are 415."""
    if request.content_type == JSON_TYPE:
        params: dict[str, Value] = dict(request.query)
        params.update(await _json_params(request))
        return params
    try:
        form = await read_form(request, _keep_file if keep_files else None)
    except Refused as refused:
        raise ServiceError(refused.status, refused.message) from None
    values: dict[str, Value] = dict(form.params)
    values.update({f"userData[{key}]": value for key, value in form.user_data.items()})
    for name, attachment in form.files.items():
        assert isinstance(attachment, FilePart)
        values[name] = attachment.file
    return values


async def _json_params(request: web.Request) -> dict[str, str]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ServiceError(500, f"Could not read JSON: {error}") from None
    if not isinstance(body, dict):
        raise ServiceError(500, "Could not read JSON: expected an object of key/value pairs")
    return {str(key): java_text(value) for key, value in body.items()}


def java_text(value: Any) -> str:
    """A JSON value as GMS stores it: strings as they are, maps and lists as Java's
    `toString` prints them (`{street=mystreet, city=mycity}`, `[a, b]`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={java_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(java_text(v) for v in value) + "]"
    return orjson.dumps(value).decode()  # numbers, true, false, null


@dataclass
class FilePart:
    """A multipart file part read whole (service storage keeps files)."""

    file: StoredFile

    async def close(self) -> None:
        return None


_MAX_FILE = StorageSettings().max_file_size


async def _keep_file(request: web.Request, form: Form, part: BodyPartReader) -> FilePart:
    content = bytearray()
    while chunk := await part.read_chunk(65536):
        content += chunk
        if len(content) > _MAX_FILE:
            raise Refused(413, f"a file is larger than {_MAX_FILE} bytes")
    content_type = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
    return FilePart(StoredFile(bytes(content), content_type, part.filename or ""))


def business_data(params: dict[str, Value]) -> dict[str, Value]:
    """What is stored: every parameter whose name does not start with `_`."""
    return {key: value for key, value in params.items() if not key.startswith("_")}


def is_true(value: Value | None) -> bool:
    return isinstance(value, str) and value.strip().lower() == "true"


# -- the API -----------------------------------------------------------------------------------


class ServiceApi:
    def __init__(self, config: ChatConfig, sessions: ServiceSessions) -> None:
        self.config = config
        self.sessions = sessions
        self.services = service_sections(config)
        for name, options in self.services.items():
            chat_service_of(config, name, options)  # a wrong _chat_service fails at start

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(ROOT + "/{service}", guard(self.create)),
            web.delete(ROOT + "/{id}", guard(self.delete)),
            web.get(ROOT + "/{id}/storage", guard(self.read_all)),
            web.post(ROOT + "/{id}/storage", guard(self.write)),
            web.delete(ROOT + "/{id}/storage", guard(self.delete_all)),
            web.get(ROOT + "/{id}/storage/binary/{key}", guard(self.read_binary)),
            web.get(ROOT + "/{id}/storage/{key}", guard(self.read_key)),
            web.delete(ROOT + "/{id}/storage/{key}", guard(self.delete_key)),
            web.post(ROOT + "/{id}/{request}", guard(self.service_request)),
        ]

    def options(self, name: str) -> dict[str, str]:
        """A service's configured options (404 for a service that is not configured)."""
        options = self.services.get(name)
        if options is None:
            raise not_found(f"Service {name} is not configured")
        return options

    def chat_service(self, name: str) -> str:
        return chat_service_of(self.config, name, self.options(name))

    # -- handlers ------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        name = request.match_info["service"]
        options = self.options(name)
        params = await read_params(request, keep_files=True)
        default_ttl = positive_seconds(options.get("_ttl"), DEFAULT_TTL_S)
        ttl = positive_seconds(_text(params.get("_ttl")), default_ttl)
        record = await self.sessions.create(
            name, request.headers.get("gms_user"), ttl, business_data(params)
        )
        reply: dict[str, Any] = {"_id": record.id}
        if record.data_id:
            reply["_data_id"] = record.data_id
        if is_true(params.get("_verbose")):
            reply["_chatIxnAPI-CREATE-URL"] = f"{ROOT}/{record.id}/ixn/chat"
        return json_response(reply)

    async def delete(self, request: web.Request) -> web.Response:
        record = await self.sessions.get(request.match_info["id"])
        await self.sessions.delete(record)
        return ok()

    async def read_all(self, request: web.Request) -> web.Response:
        record = await self.sessions.get(request.match_info["id"])
        data = await self.sessions.data(record)
        return json_response({k: self._render(request, record, k, v) for k, v in data.items()})

    async def read_key(self, request: web.Request) -> web.Response:
        record, key, value = await self._value(request)
        return json_response({key: self._render(request, record, key, value)})

    async def read_binary(self, request: web.Request) -> web.Response:
        _, key, value = await self._value(request)
        if not isinstance(value, StoredFile):
            raise not_found(f"Binary key {key} not found")
        return web.Response(body=value.content, content_type=value.content_type)

    async def write(self, request: web.Request) -> web.Response:
        record = await self.sessions.get(request.match_info["id"])
        params = await read_params(request, keep_files=True)
        await self.sessions.put_data(record, business_data(params))
        return ok()

    async def delete_key(self, request: web.Request) -> web.Response:
        record, key, _ = await self._value(request)
        data = await self.sessions.data(record)
        data.pop(key, None)
        await self.sessions.replace_data(record, data)
        return ok()

    async def delete_all(self, request: web.Request) -> web.Response:
        record = await self.sessions.get(request.match_info["id"])
        await self.sessions.replace_data(record, {})
        return ok()

    async def service_request(self, request: web.Request) -> web.Response:
        """`POST {id}/{request}`, a service specific request: GMS rejects one the service does
        not support, and none of ours supports any (`status` belongs to ORS-driven services
        such as `request-chat-poll`; `ixn/chat` is Chat API v1, chat_v1.py)."""
        record = await self.sessions.get(request.match_info["id"])
        name = request.match_info["request"]
        raise bad_request(f"Service {record.name} does not support the request '{name}'")

    async def _value(self, request: web.Request) -> tuple[ServiceRecord, str, Value]:
        record = await self.sessions.get(request.match_info["id"])
        key = request.match_info["key"]
        value = (await self.sessions.data(record)).get(key)
        if value is None:
            raise not_found(f"Key {key} not found")
        return record, key, value

    def _render(self, request: web.Request, record: ServiceRecord, key: str, value: Value) -> str:
        if isinstance(value, str):
            return value
        return f"{request.scheme}://{request.host}{ROOT}/{record.id}/storage/binary/{key}"


def _text(value: Value | None) -> str | None:
    return value if isinstance(value, str) else None


def ok() -> web.Response:
    """The body of a delete: GMS's `Result OK`."""
    return web.Response(text="OK", content_type="text/plain")


def guard(handler: Handler) -> Handler:
    """Answer a `ServiceError` with its GMS body."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServiceError as error:
            return error.response()

    return guarded


def setup(app: web.Application, config: ChatConfig, backend: StorageBackend) -> ServiceApi:
    api = ServiceApi(config, ServiceSessions(backend))
    app.add_routes(api.routes())
    return api
