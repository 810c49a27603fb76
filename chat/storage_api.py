"""GMS Storage API: `/genesys/1/storage/...`, temporary key/value areas with a TTL.

Values are strings or files (multipart parts with a filename). Keys starting with `_` are
ignored, as GMS does. An area created with a custom id belongs to the `gms_user` that made
it; other users are told it does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import orjson
from aiohttp import BodyPartReader, web

from .auth import BasicAuth, protected
from .storage import StorageArea, StorageBackend, StoredFile, Value
from .store import StoreUnavailable

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_TTL = 30
NOT_FOUND_EXCEPTION = "com.genesyslab.gsg.services.storage.StorageNotFoundException"
MIME_EXCEPTION = "com.genesyslab.gsg.services.storage.MimeTypeNotAllowedException"


@dataclass
class StorageSettings:
    """`[storage]`: limits and file control."""

    max_ttl: int = 86_400
    max_file_size: int = 10 * 1_048_576
    allow_file_control: bool = False
    allowed_mime_types: tuple[str, ...] = ()
    external_url_base: str | None = None
    protected: bool = False

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, str]]) -> StorageSettings:
        storage = sections.get("storage", {})
        mime = storage.get("allowed-mime-types", "")
        return cls(
            max_ttl=int(storage.get("storage.max-ttl", 86_400)),
            max_file_size=int(storage.get("max-file-size", 10 * 1_048_576)),
            allow_file_control=storage.get("allow-file-control", "false").lower() == "true",
            allowed_mime_types=tuple(m.strip() for m in mime.split(",") if m.strip()),
            external_url_base=sections.get("server", {}).get("external_url_base"),
            protected=protected(sections.get("auth", {}), "storage"),
        )


class StorageApi:
    def __init__(self, backend: StorageBackend, settings: StorageSettings, auth: BasicAuth) -> None:
        self.backend = backend
        self.settings = settings
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        base = "/genesys/1/storage"
        return [
            web.post(base + "/custom/{area_id}/{ttl}", self.create_custom),
            web.post(base + "/{ttl}", self.create),
            web.post(base + "/{area_id}/{ttl}", self.update),
            web.get(base + "/binary/{area_id}/{key}", self.read_binary),
            web.get(base + "/{area_id}", self.read_all),
            web.get(base + "/{area_id}/{key}", self.read_key),
            web.delete(base + "/{area_id}", self.delete),
        ]

    # -- handlers ------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        area_id = str(uuid.uuid4())
        await self._write(request, area_id, request.headers.get("gms_user"), merge=False)
        return web.json_response({"id": area_id})

    async def create_custom(self, request: web.Request) -> web.Response:
        user = request.headers.get("gms_user")
        if not user:
            raise _failure(400, "the gms_user header is required for a custom id", "BadRequest")
        area_id = request.match_info["area_id"]
        existing = await self._area(area_id)
        if existing is not None and existing.owner != user:
            raise _failure(404, "Storage ID not found")
        await self._write(request, area_id, user, merge=False)
        return web.json_response({"id": area_id})

    async def update(self, request: web.Request) -> web.Response:
        area = await self._owned(request)
        await self._write(request, area.id, area.owner, merge=True)
        return web.json_response({})

    async def read_all(self, request: web.Request) -> web.Response:
        area = await self._owned(request)
        return web.json_response(
            {key: self._render(request, area.id, key, value) for key, value in area.values.items()}
        )

    async def read_key(self, request: web.Request) -> web.Response:
        area = await self._owned(request)
        key = request.match_info["key"]
        if key not in area.values:
            raise _failure(404, "Key not found")
        text = self._render(request, area.id, key, area.values[key])
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def read_binary(self, request: web.Request) -> web.Response:
        area = await self._owned(request)
        value = area.values.get(request.match_info["key"])
        if not isinstance(value, StoredFile):
            raise _failure(404, "File not found")
        disposition = f'inline; filename="{value.filename.replace(chr(34), "")}"'
        return web.Response(
            body=value.content,
            content_type=value.content_type or "application/octet-stream",
            headers={"Content-Disposition": disposition},
        )

    async def delete(self, request: web.Request) -> web.Response:
        area = await self._owned(request)
        await self._call(self.backend.delete(area.id))
        return web.json_response({})

    # -- helpers -------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Auth (when `[auth] storage = true`) and no-cache headers for the storage routes."""
        if not request.path.startswith("/genesys/1/storage"):
            return await handler(request)
        if self.settings.protected:
            await self.auth.require(request)
        response = await handler(request)
        response.headers["Cache-Control"] = "no-cache, no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    async def _owned(self, request: web.Request) -> StorageArea:
        area = await self._area(request.match_info["area_id"])
        if area is None or (area.owner and area.owner != request.headers.get("gms_user")):
            raise _failure(404, "Storage ID not found")
        return area

    async def _area(self, area_id: str) -> StorageArea | None:
        return await self._call(self.backend.get(area_id))

    async def _write(
        self, request: web.Request, area_id: str, owner: str | None, merge: bool
    ) -> None:
        values = await self._read_values(request)
        ttl = _ttl(request.match_info["ttl"], self.settings.max_ttl)
        await self._call(self.backend.put(area_id, owner, ttl, values, merge))

    async def _read_values(self, request: web.Request) -> dict[str, Value]:
        values: dict[str, Value] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if isinstance(part, BodyPartReader) and part.name:
                    values[part.name] = await self._read_part(part)
        else:
            for key, value in (await request.post()).items():
                if isinstance(value, str):
                    values[key] = value
        return {k: v for k, v in values.items() if not k.startswith("_")}

    async def _read_part(self, part: BodyPartReader) -> Value:
        if part.filename is None:
            return (await part.read(decode=True)).decode("utf-8", "replace")
        content_type = part.headers.get("Content-Type", "application/octet-stream")
        allowed = self.settings.allowed_mime_types
        if self.settings.allow_file_control and content_type not in allowed:
            raise _failure(415, f"Mime type {content_type} not allowed", MIME_EXCEPTION)
        content = bytearray()
        while chunk := await part.read_chunk(65536):
            content += chunk
            if len(content) > self.settings.max_file_size:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=self.settings.max_file_size, actual_size=len(content)
                )
        return StoredFile(bytes(content), content_type, part.filename)

    def _render(self, request: web.Request, area_id: str, key: str, value: Value) -> str:
        if isinstance(value, str):
            return value
        base = self.settings.external_url_base or f"{request.scheme}://{request.host}"
        return f"{base.rstrip('/')}/genesys/1/storage/binary/{area_id}/{key}"

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except StoreUnavailable as exc:
            raise _failure(503, f"storage unavailable: {exc}", "StorageUnavailable") from exc


def _ttl(raw: str, maximum: int) -> int:
    """GMS: an incorrect TTL silently means 30 seconds."""
    try:
        ttl = int(raw)
    except ValueError:
        return DEFAULT_TTL
    return min(ttl, maximum) if ttl > 0 else DEFAULT_TTL


def _failure(status: int, message: str, exception: str = NOT_FOUND_EXCEPTION) -> web.HTTPException:
    """GMS's error body, `{"message", "exception"}`, as an exception to raise."""
    body = orjson.dumps({"message": message, "exception": exception}).decode()
    return _status(status)(text=body, content_type="application/json")


def _status(status: int) -> type[web.HTTPException]:
    return {
        400: web.HTTPBadRequest,
        404: web.HTTPNotFound,
        415: web.HTTPUnsupportedMediaType,
        503: web.HTTPServiceUnavailable,
    }[status]
