"""Chat v2 file management (spec-chat-v2 §4): limits, upload, download and delete.

Three ways in, one core (`ChatFiles`):

* REST, under `/genesys/2/chat/{serviceName}/{chatId}/file`: `limits`, the upload itself,
  `{fileId}/download` (and its alias `{fileId}`) and `{fileId}/delete`, through the common
  path of chat_v2_rest (validation order, CORS, Basic auth, envelopes);
* chat-ntf, `POST /genesys/2/chat-ntf` with `operation` (`fileGetLimits`, `fileUpload`,
  `fileDownload` or `download`, `fileDelete`) and `secureKey`, for CometD clients;
* the agent side, `ChatFiles.agent_upload` / `agent_delete` / `agent_download`.

A chat's file records and counters live in `session.extra["files"]` and change only through
`ChatEngine.change`, with the `FileUploaded`/`FileDeleted` events that announce them, so the
engine's observers deliver those (to a bound CometD client too) like any other event. The
contents live in a `FileStore` under random blob ids: on disk for one node, in Redis for many.

Uploads are streamed: the file part goes to the store chunk by chunk while it is measured
against the limits, and is dropped from the store as soon as it cannot be accepted. Every check
then runs in the spec's order (§1.7, §4.2) once the whole form is known, and again atomically
with the commit.
"""

from __future__ import annotations

import asyncio
import html
import logging
import mimetypes
import re
import secrets
import shutil
import tempfile
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote

from aiohttp import BodyPartReader, hdrs, web
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from bayeux.redis_client import open_redis

from . import errors as e
from . import model as m
from .chat_v2_rest import (
    NO_CACHE,
    ROOT,
    Answer,
    Call,
    Failure,
    Fields,
    Form,
    Refused,
    Reply,
    RestApi,
    envelope,
    guarded,
    json_failure,
    read_form,
    reference_id,
    respond,
)
from .config import ChatConfig, FileOptions
from .engine import CLIENT_REST, Cause, ChatEngine, Outcome, event_time
from .model import ChatSession, Event, Party
from .store import StoreUnavailable, redis_failures

log = logging.getLogger("gms.chat.files")

T = TypeVar("T")

CHUNK = 64 * 1024
"""Bytes read, stored or sent at a time."""
FILES = "files"
"""The `session.extra` key of a chat's file state."""
NTF_PATH = "/genesys/2/chat-ntf"
CHAT_NTF = Cause("client", "chat-ntf")
LIMITS_NOTICE = "file-client-cfg-get"
OCTET_STREAM = "application/octet-stream"
BLOB_ID = re.compile(r"[0-9a-f]{32}")


# -- file stores -----------------------------------------------------------------------


def new_blob_id() -> str:
    return secrets.token_hex(16)


class FileTooLarge(Exception):
    """A write past a blob's limit (a store never grows beyond the upload limits)."""


class BlobWriter(ABC):
    """One upload on its way into a store; never larger than its `limit`."""

    def __init__(self, blob: str, limit: int) -> None:
        self.blob = blob
        self.limit = limit
        self.size = 0

    async def write(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            raise FileTooLarge(f"file larger than its limit of {self.limit} bytes")
        self.size += len(data)
        await self._write(data)

    @abstractmethod
    async def _write(self, data: bytes) -> None: ...

    @abstractmethod
    async def commit(self) -> None:
        """Make the content readable under `blob`."""

    @abstractmethod
    async def discard(self) -> None:
        """Forget what was written."""


class FileStore(ABC):
    """Where file contents live, by blob id. Failures raise `StoreUnavailable`."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abstractmethod
    async def writer(self, limit: int) -> BlobWriter:
        """A writer for a new blob of at most `limit` bytes."""

    @abstractmethod
    async def open(self, blob: str) -> AsyncIterator[bytes] | None:
        """The blob's content in chunks, or None if there is no such blob."""

    @abstractmethod
    async def delete(self, blob: str) -> None:
        """Forget the blob (nothing happens if there is none)."""


class DiskFileStore(FileStore):
    """One directory, one file per blob (`<id>.part` while its upload streams in).

    Without a configured directory, a new one under the OS temp directory is made on first
    use and removed when the store closes. Every chunk is written as it arrives.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._configured = Path(directory) if directory else None
        self._directory: Path | None = None

    async def _root(self) -> Path:
        if self._directory is None:
            if self._configured is None:
                made = await asyncio.to_thread(tempfile.mkdtemp, prefix="gms-files-")
                self._directory = Path(made)
            else:
                await asyncio.to_thread(self._configured.mkdir, parents=True, exist_ok=True)
                self._directory = self._configured
        return self._directory

    async def path(self, blob: str) -> Path:
        if not BLOB_ID.fullmatch(blob):
            raise ValueError(f"not a blob id: {blob!r}")
        return (await self._root()) / blob

    async def close(self) -> None:
        if self._configured is None and self._directory is not None:
            await asyncio.to_thread(shutil.rmtree, self._directory, True)
            self._directory = None

    async def writer(self, limit: int) -> BlobWriter:
        blob = new_blob_id()
        final = await self.path(blob)
        part = final.with_suffix(".part")
        handle = await _disk(asyncio.to_thread(part.open, "xb"))
        return _DiskWriter(blob, limit, handle, part, final)

    async def open(self, blob: str) -> AsyncIterator[bytes] | None:
        path = await self.path(blob)
        if not await _disk(asyncio.to_thread(path.is_file)):
            return None
        return _read_file(path)

    async def delete(self, blob: str) -> None:
        path = await self.path(blob)
        await _disk(asyncio.to_thread(path.unlink, missing_ok=True))


class _DiskWriter(BlobWriter):
    def __init__(self, blob: str, limit: int, handle: IO[bytes], part: Path, final: Path):
        super().__init__(blob, limit)
        self._handle = handle
        self._part = part
        self._final = final

    async def _write(self, data: bytes) -> None:
        await _disk(asyncio.to_thread(self._handle.write, data))

    async def commit(self) -> None:
        await _disk(asyncio.to_thread(self._finish, True))

    async def discard(self) -> None:
        await _disk(asyncio.to_thread(self._finish, False))

    def _finish(self, keep: bool) -> None:
        self._handle.close()
        if keep:
            self._part.replace(self._final)
        else:
            self._part.unlink(missing_ok=True)


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    handle = await _disk(asyncio.to_thread(path.open, "rb"))
    try:
        while chunk := await _disk(asyncio.to_thread(handle.read, CHUNK)):
            yield chunk
    finally:
        handle.close()


async def store_call(work: Awaitable[T]) -> T:
    """A file store operation; its unavailability is a transient chat error (`statusCode` 1)."""
    try:
        return await work
    except StoreUnavailable as exc:
        raise e.transient(str(exc)) from exc


async def _disk(work: Awaitable[T]) -> T:
    try:
        return await work
    except OSError as exc:
        raise StoreUnavailable(f"file store: {exc}") from exc


class RedisFileStore(FileStore):
    """Blobs as Redis strings `<prefix>:file:<id>`, so that every node serves every file.

    An upload is appended chunk by chunk to `<prefix>:file:<id>:part`, which expires after
    `pending_ttl_s` unless committed (renamed); its size is bounded by the writer's limit,
    i.e. by the upload limits.
    """

    def __init__(self, url: str, prefix: str = "gms", pending_ttl_s: int = 3600) -> None:
        self.prefix = prefix
        self.pending_ttl_ms = pending_ttl_s * 1000
        self._redis: aioredis.Redis = open_redis(url)

    def key(self, blob: str) -> str:
        return f"{self.prefix}:file:{blob}"

    async def close(self) -> None:
        with suppress(RedisError, OSError):
            await self._redis.aclose()

    async def writer(self, limit: int) -> BlobWriter:
        blob = new_blob_id()
        return _RedisWriter(self, blob, limit)

    async def open(self, blob: str) -> AsyncIterator[bytes] | None:
        size = await self.call(self._redis.strlen(self.key(blob)))
        if not size and not await self.call(self._redis.exists(self.key(blob))):
            return None
        return self._read(self.key(blob), int(size))

    async def delete(self, blob: str) -> None:
        await self.call(self._redis.delete(self.key(blob)))

    async def _read(self, key: str, size: int) -> AsyncIterator[bytes]:
        for start in range(0, size, CHUNK):
            chunk: bytes = await self.call(self._redis.getrange(key, start, start + CHUNK - 1))
            if not chunk:
                return  # deleted meanwhile
            yield chunk

    async def call(self, command: Awaitable[Any]) -> Any:
        with redis_failures():
            return await command

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis


class _RedisWriter(BlobWriter):
    def __init__(self, store: RedisFileStore, blob: str, limit: int) -> None:
        super().__init__(blob, limit)
        self._store = store
        self._part = store.key(blob) + ":part"

    async def _write(self, data: bytes) -> None:
        async with self._store.redis.pipeline(transaction=False) as pipe:
            pipe.append(self._part, data)
            pipe.pexpire(self._part, self._store.pending_ttl_ms)
            await self._store.call(pipe.execute())

    async def commit(self) -> None:
        final = self._store.key(self.blob)
        if self.size == 0:  # nothing was appended, so there is nothing to rename
            await self._store.call(self._store.redis.set(final, b""))
            return
        async with self._store.redis.pipeline(transaction=True) as pipe:
            pipe.rename(self._part, final)
            pipe.persist(final)
            await self._store.call(pipe.execute())

    async def discard(self) -> None:
        await self._store.call(self._store.redis.delete(self._part))


# -- per-chat file state ---------------------------------------------------------------


@dataclass
class FileRecord:
    file_id: str
    blob: str
    name: str
    size: int
    mime: str
    owner: str
    """The uploader's party type: `Client` or `Agent`."""
    downloads: int = 0
    """Client downloads of this file."""
    deleted: bool = False

    def event_data(self) -> dict[str, str]:
        return {
            "file-id": self.file_id,
            "file-name": self.name,
            "file-size": str(self.size),
            "file-type": self.mime,
        }


@dataclass
class FilesState:
    """A chat's files and the client's counters (the `used-*` limits keys)."""

    records: dict[str, FileRecord] = field(default_factory=dict)
    uploaded: int = 0
    uploaded_bytes: int = 0
    downloads: int = 0

    @classmethod
    def of(cls, session: ChatSession) -> FilesState:
        raw = session.extra.get(FILES)
        if not raw:
            return cls()
        records = {k: FileRecord(**v) for k, v in raw["records"].items()}
        return cls(records, raw["uploaded"], raw["uploaded_bytes"], raw["downloads"])

    def save(self, session: ChatSession) -> None:
        session.extra[FILES] = asdict(self)

    def new_file_id(self) -> str:
        """16 uppercase hex characters, unique in the chat."""
        while (file_id := m.user_id()) in self.records:
            pass
        return file_id

    def find(self, file_id: str, session: ChatSession) -> FileRecord:
        record = self.records.get(file_id)
        if record is None:
            raise _refusal(e.FILE_NOT_FOUND, "file not found", session)
        return record


FileChange = Callable[[ChatSession, FilesState], list[Event]]


def _with_files(change: FileChange) -> Callable[[ChatSession], list[Event]]:
    """An engine change of a chat's file state."""

    def apply(session: ChatSession) -> list[Event]:
        state = FilesState.of(session)
        events = change(session, state)
        state.save(session)
        return events

    return apply


def _refusal(code: int, advice: str, session: ChatSession) -> e.ChatError:
    """A refused operation on a live chat: HTTP 200, `statusCode` 2 (spec §1.7)."""
    return e.ChatError([e.ErrorCode(code, advice)], chat_ended=session.ended)


def extension(name: str) -> str:
    return name.rpartition(".")[2].lower() if "." in name else ""


def upload_problems(
    options: FileOptions, state: FilesState, name: str, size: int
) -> list[e.ErrorCode]:
    """The limits an upload breaks, in the spec's order (§4.2 step 4)."""
    problems: list[e.ErrorCode] = []
    if extension(name) not in options.file_types:
        allowed = ",".join(t.strip() for t in options.upload_file_types.split(":") if t.strip())
        problems.append(e.ErrorCode(e.FILE_TYPE_NOT_ALLOWED, allowed))
    if size > options.max_file_size:
        problems.append(e.ErrorCode(e.FILES_TOO_LARGE, options.upload_max_file_size))
    if state.uploaded_bytes + size > options.max_total_size:
        problems.append(e.ErrorCode(e.FILES_TOO_LARGE, options.upload_max_total_size))
    if state.uploaded >= options.max_files:
        problems.append(e.ErrorCode(e.TOO_MANY_FILES, options.upload_max_files))
    return problems


def needs_agent(options: FileOptions, session: ChatSession) -> bool:
    return options.need_agent and not session.agents


def check_upload(
    options: FileOptions, session: ChatSession, state: FilesState, name: str, size: int
) -> None:
    """261 without an agent (when one is needed), then every broken limit in one 400."""
    if needs_agent(options, session):
        raise _refusal(e.AGENT_NOT_JOINED, "an agent must join before files are uploaded", session)
    problems = upload_problems(options, state, name, size)
    if problems:
        raise e.invalid(*problems)


def loosest(options: Iterable[FileOptions]) -> FileOptions:
    """Options no stricter than any of `options` (for a file part whose chat is not known
    yet): the largest limits, every file type, no agent needed."""
    every = list(options)
    types = dict.fromkeys(t for o in every for t in o.file_types)
    return FileOptions(
        upload_max_files=str(max(o.max_files for o in every)),
        upload_max_file_size=str(max(o.max_file_size for o in every)),
        upload_max_total_size=str(max(o.max_total_size for o in every)),
        upload_need_agent="false",
        upload_file_types=":".join(types),
    )


# -- an upload on its way in -----------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How much of a file part to store and to measure."""

    keep: int | None
    """Store the part while its size is at most this; None: it cannot be accepted anyway."""
    measure: int
    """Beyond this size every size limit is broken, so the exact size no longer matters."""

    @classmethod
    def of(cls, options: FileOptions, name: str, session: ChatSession | None) -> Budget:
        state = FilesState.of(session) if session is not None else FilesState()
        room = options.max_total_size - state.uploaded_bytes
        refused = bool(upload_problems(options, state, name, 0)) or (
            session is not None and needs_agent(options, session)
        )
        keep = min(options.max_file_size, room)
        measure = max(options.max_file_size, room)
        return cls(None if refused or keep < 0 else keep, measure)


class Incoming:
    """A file part being received: measured, and kept in the store only while it stays
    within its budget. A form attachment: closing it drops what was not kept."""

    def __init__(self, name: str, mime: str, writer: BlobWriter | None) -> None:
        self.name = name
        self.mime = mime
        self.size = 0
        self._writer = writer

    async def take(self, data: bytes) -> None:
        self.size += len(data)
        if self._writer is None:
            return
        if self.size > self._writer.limit:
            await self.close()
        else:
            await self._writer.write(data)

    async def keep(self) -> str:
        """Commit the content; its blob id."""
        writer, self._writer = self._writer, None
        if writer is None:
            raise RuntimeError(f"upload {self.name!r} was not stored")
        await writer.commit()
        return writer.blob

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.discard()


BROWSER_ESCAPES = re.compile(r"%(22|0[aAdD])")
"""What browsers escape in multipart file names (`"`, CR, LF; WHATWG HTML)."""


def clean_name(filename: str) -> str:
    """The file name without browser escapes, any client path and control characters."""
    unescaped = BROWSER_ESCAPES.sub(lambda match: chr(int(match.group(1), 16)), filename)
    base = re.split(r"[/\\]", unescaped)[-1]
    name = "".join(c for c in base if unicodedata.category(c) != "Cc").strip()
    return name or "file"


def mime_of(part: BodyPartReader, name: str) -> str:
    """The part's declared type; for an undeclared or generic one, a guess from the name."""
    declared = part.headers.get(hdrs.CONTENT_TYPE, "").strip()
    if declared and declared.split(";")[0].strip().lower() != OCTET_STREAM:
        return "".join(c for c in declared if unicodedata.category(c) != "Cc")
    return mimetypes.guess_type(name)[0] or OCTET_STREAM


# -- the core --------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    name: str
    size: int
    mime: str
    user_data: dict[str, str] = field(default_factory=dict)


Author = Callable[[ChatSession, FilesState], Party]
"""Checks that a party may add a file now, and names it."""
Remover = Callable[[ChatSession, FileRecord], Party]
"""Checks that a party may delete a file, and names it."""


class ChatFiles:
    """Files of every chat: the operations of both sides, and cleanup when a chat ends."""

    def __init__(self, chat: ChatEngine, store: FileStore) -> None:
        self.chat = chat
        self.store = store

    @property
    def config(self) -> ChatConfig:
        return self.chat.config

    def options(self, service: str) -> FileOptions:
        return self.config.files(service)

    def loosest_options(self) -> FileOptions:
        return loosest(self.options(name) for name in self.config.services)

    def limits(self, session: ChatSession) -> dict[str, str]:
        """The 10 limits keys, all strings, in GMS's order (spec §4.1)."""
        options = self.options(session.service)
        state = FilesState.of(session)
        return {
            "download-attempts": options.download_attempts,
            "upload-max-files": options.upload_max_files,
            "delete-file": options.delete_file,
            "upload-max-file-size": options.upload_max_file_size,
            "used-download-attempts": str(state.downloads),
            "used-upload-max-total-size": str(state.uploaded_bytes),
            "upload-need-agent": options.upload_need_agent,
            "used-upload-max-files": str(state.uploaded),
            "upload-max-total-size": options.upload_max_total_size,
            "upload-file-types": options.upload_file_types,
        }

    async def incoming(self, name: str, mime: str, keep: int | None) -> Incoming:
        writer = None if keep is None else await store_call(self.store.writer(keep))
        return Incoming(name, mime, writer)

    # -- the client ----------------------------------------------------------------------
    async def upload(
        self, session: ChatSession, incoming: Incoming, user_data: dict[str, str], cause: Cause
    ) -> tuple[Outcome, str]:
        """Check (261, then the limits), store, count and announce a client's upload; the
        outcome and the new file id."""
        options = self.options(session.service)
        name, size = incoming.name, incoming.size
        check_upload(options, session, FilesState.of(session), name, size)

        def client(session: ChatSession, state: FilesState) -> Party:
            check_upload(options, session, state, name, size)  # again, atomically
            state.uploaded += 1
            state.uploaded_bytes += size
            return session.client

        blob = await store_call(incoming.keep())
        upload = Upload(name, size, incoming.mime, user_data)
        outcome = await self._add(session.chat_id, blob, upload, client, cause)
        return outcome, _file_id(outcome)

    async def download(
        self, session: ChatSession, file_id: str, cause: Cause
    ) -> tuple[FileRecord, AsyncIterator[bytes]]:
        """Count a client download (241, 264, 249 when its attempts are used up) and open it."""
        options = self.options(session.service)

        def count(session: ChatSession, state: FilesState) -> list[Event]:
            record = _live(state, file_id, session)
            if record.downloads >= options.max_downloads:
                raise _refusal(e.SESSION_NOT_FOUND, "download-attempts exceeded", session)
            record.downloads += 1
            state.downloads += 1
            return []

        outcome = await self.chat.change(session.chat_id, _with_files(count), cause)
        record = FilesState.of(outcome.session).records[file_id]
        return record, await self._content(record, outcome.session)

    async def delete(self, session: ChatSession, file_id: str, cause: Cause) -> Outcome:
        """A client deletes one of its own files, if the service allows it (249 otherwise)."""
        options = self.options(session.service)

        def client(session: ChatSession, record: FileRecord) -> Party:
            if record.owner != m.CLIENT or not options.client_may_delete:
                raise _refusal(e.SESSION_NOT_FOUND, "the client may not delete this file", session)
            return session.client

        return await self._remove(session.chat_id, file_id, client, cause)

    # -- the agent side ------------------------------------------------------------------
    async def agent_upload(
        self,
        chat_id: str,
        agent_id: str,
        name: str,
        content: bytes,
        mime: str | None = None,
        user_data: dict[str, str] | None = None,
    ) -> str:
        """A joined agent shares a file (not counted against the client's limits, but no
        larger than `upload-max-file-size`); its file id."""
        session = await self.chat.load(chat_id)
        _agent(session, agent_id)
        options = self.options(session.service)
        if len(content) > options.max_file_size:
            raise e.invalid(e.ErrorCode(e.FILES_TOO_LARGE, options.upload_max_file_size))
        blob = await self._write(content)
        mime = mime or mimetypes.guess_type(name)[0] or OCTET_STREAM
        upload = Upload(clean_name(name), len(content), mime, dict(user_data or {}))
        outcome = await self._add(
            chat_id, blob, upload, lambda s, _: _agent(s, agent_id), Cause("agent")
        )
        return _file_id(outcome)

    async def agent_delete(self, chat_id: str, agent_id: str, file_id: str) -> Outcome:
        """A joined agent deletes any file of the chat."""
        return await self._remove(
            chat_id, file_id, lambda s, _: _agent(s, agent_id), Cause("agent")
        )

    async def agent_download(self, chat_id: str, file_id: str) -> tuple[FileRecord, bytes]:
        """A file's record and content, for the agent side (not counted)."""
        session = await self.chat.load(chat_id)
        record = _live(FilesState.of(session), file_id, session)
        chunks = await self._content(record, session)
        return record, b"".join([chunk async for chunk in chunks])

    # -- the observer: a chat's files go with it -----------------------------------------
    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        if not (session.ended and events):
            return
        for record in FilesState.of(session).records.values():
            if not record.deleted:
                await self._forget(record.blob)

    # -- shared steps --------------------------------------------------------------------
    async def _add(
        self, chat_id: str, blob: str, upload: Upload, author: Author, cause: Cause
    ) -> Outcome:
        """Record a stored blob and announce it with FileUploaded (or forget the blob)."""

        def add(session: ChatSession, state: FilesState) -> list[Event]:
            party = author(session, state)
            record = FileRecord(
                state.new_file_id(), blob, upload.name, upload.size, upload.mime, party.type
            )
            state.records[record.file_id] = record
            data = {**upload.user_data, **record.event_data()}
            return [self.chat.event(m.FILE_UPLOADED, party, record.name, user_data=data)]

        try:
            return await self.chat.change(chat_id, _with_files(add), cause)
        except BaseException:
            await self._forget(blob)
            raise

    async def _remove(self, chat_id: str, file_id: str, remover: Remover, cause: Cause) -> Outcome:
        """Mark a file deleted (241 unknown, 264 deleted already), give the client's upload
        slot back when `delete-file` says so, announce FileDeleted, then drop the content."""
        deleted: list[FileRecord] = []

        def remove(session: ChatSession, state: FilesState) -> list[Event]:
            options = self.options(session.service)
            record = state.find(file_id, session)
            party = remover(session, record)
            if record.deleted:
                raise _refusal(e.FILE_ALREADY_DELETED, "file already deleted", session)
            record.deleted = True
            if record.owner == m.CLIENT and options.delete_frees_slot:
                state.uploaded -= 1
                state.uploaded_bytes -= record.size
            deleted[:] = [record]
            data = {"file-id": record.file_id, "file-name": record.name}
            return [self.chat.event(m.FILE_DELETED, party, record.name, user_data=data)]

        outcome = await self.chat.change(chat_id, _with_files(remove), cause)
        await self._forget(deleted[0].blob)
        return outcome

    async def _write(self, content: bytes) -> str:
        writer = await store_call(self.store.writer(len(content)))
        try:
            for start in range(0, len(content), CHUNK):
                await store_call(writer.write(content[start : start + CHUNK]))
            await store_call(writer.commit())
        except BaseException:
            with suppress(StoreUnavailable):
                await writer.discard()
            raise
        return writer.blob

    async def _content(self, record: FileRecord, session: ChatSession) -> AsyncIterator[bytes]:
        chunks = await store_call(self.store.open(record.blob))
        if chunks is None:
            log.error("chat %s: file %s has no content", session.chat_id, record.file_id)
            raise _refusal(e.FILE_NOT_FOUND, "file content is gone", session)
        return chunks

    async def _forget(self, blob: str) -> None:
        try:
            await self.store.delete(blob)
        except StoreUnavailable as exc:
            log.warning("file %s not deleted: %s", blob, exc)


def _live(state: FilesState, file_id: str, session: ChatSession) -> FileRecord:
    """A file that can be downloaded: 241 if unknown, 264 if deleted."""
    record = state.find(file_id, session)
    if record.deleted:
        raise _refusal(e.FILE_ALREADY_DELETED, "file deleted", session)
    return record


def _agent(session: ChatSession, agent_id: str) -> Party:
    party = session.agents.get(agent_id)
    if party is None:
        raise e.session_not_found()
    return party


def _file_id(outcome: Outcome) -> str:
    [uploaded] = outcome.events
    assert uploaded.user_data is not None
    return uploaded.user_data["file-id"]


# -- HTTP replies ----------------------------------------------------------------------


def download_response(record: FileRecord, chunks: AsyncIterator[bytes]) -> web.Response:
    """The file itself, streamed, as a plain download (spec §4.4)."""
    headers = {
        hdrs.CONTENT_TYPE: record.mime,
        hdrs.CONTENT_LENGTH: str(record.size),
        hdrs.CONTENT_DISPOSITION: content_disposition(record.name),
        "X-Content-Type-Options": "nosniff",
        hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: hdrs.CONTENT_DISPOSITION,
        **NO_CACHE,
    }
    return web.Response(body=chunks, headers=headers)


def content_disposition(name: str) -> str:
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def html_failure(request: web.Request, error: Exception) -> web.Response:
    """A failed download: an HTML page with the referenceId the cause is logged under, HTTP
    500 (404 for an unknown service, 401 to ask for Basic credentials)."""
    reference = reference_id()
    status, codes, headers = 500, [e.INTERNAL_ERROR], {}
    if isinstance(error, e.ChatError):
        status, codes = (404 if error.http == 404 else 500), error.codes
        log.warning("download %s failed, referenceId %s: %s", request.path, reference, error)
    elif isinstance(error, Refused):
        if error.status == 401:
            status, headers = 401, error.headers
        log.warning("download %s refused, referenceId %s: %s", request.path, reference, error)
    else:
        log.exception("download %s failed, referenceId %s", request.path, reference)
    code = ", ".join(str(c) for c in codes)
    page = (
        "<html><body><h1>Download failed</h1>"
        f"<p>referenceId: {html.escape(reference)}</p><p>code: {code}</p></body></html>"
    )
    headers = {**headers, hdrs.CONTENT_TYPE: "text/html;charset=UTF-8", **NO_CACHE}
    return web.Response(status=status, body=page.encode(), headers=headers)


# -- the client surfaces ---------------------------------------------------------------


class SessionCall(Protocol):
    """A request whose parameters are being validated, and that opens one chat."""

    form: Form
    problems: list[int]

    @property
    def user_data(self) -> dict[str, str]: ...

    async def session(self, allow_ended: bool = False) -> ChatSession: ...


class Surface(ABC):
    """What REST and chat-ntf share: receiving a streamed file part, and the operations up
    to their transport-specific replies."""

    cause: Cause

    def __init__(self, files: ChatFiles) -> None:
        self.files = files

    @abstractmethod
    def identified(self, form: Form) -> bool:
        """Whether the form names its chat already (its required fields are there)."""

    @abstractmethod
    async def session_of(self, request: web.Request, form: Form) -> ChatSession:
        """The chat an identified form opens (ChatError if none)."""

    @abstractmethod
    def fallback_options(self, request: web.Request) -> FileOptions:
        """The limits for a file part that comes before the fields naming its chat."""

    def wants_file(self, form: Form) -> bool:
        return True

    async def receive(self, request: web.Request, form: Form, part: BodyPartReader) -> Incoming:
        """A `FileReceiver`: stream the part into the store within the tightest budget known
        so far. Once the chat is known to refuse it, or every size limit is broken, the rest
        of the body is left unread; before that, an oversized part is only drained (so the
        fields after it can still be read), up to twice the largest limit (413 beyond)."""
        name = clean_name(part.filename or "")
        session: ChatSession | None = None
        identified = self.identified(form)
        if identified:
            try:
                session = await self.session_of(request, form)
            except e.ChatError:
                return Incoming(name, OCTET_STREAM, None)  # refused whatever the file
        options = self.files.options(session.service) if session else self.fallback_options(request)
        budget = Budget.of(options, name, session)
        keep = budget.keep if self.wants_file(form) else None
        incoming = await self.files.incoming(name, mime_of(part, name), keep)
        try:
            await store_call(_measure(part, incoming, budget.measure, identified))
        except BaseException:
            await incoming.close()
            raise
        return incoming

    async def upload_file(self, call: SessionCall) -> tuple[Outcome, str]:
        incoming = call.form.files.get("file")
        if not isinstance(incoming, Incoming):
            call.problems.append(e.FILE_MISSING)
        session = await call.session()
        assert isinstance(incoming, Incoming)
        return await self.files.upload(session, incoming, call.user_data, self.cause)

    async def download_file(self, call: SessionCall, file_id: str) -> web.Response:
        session = await call.session()
        record, chunks = await self.files.download(session, file_id, self.cause)
        return download_response(record, chunks)

    async def delete_file(self, call: SessionCall, file_id: str) -> Outcome:
        session = await call.session()
        return await self.files.delete(session, file_id, self.cause)


async def _measure(part: BodyPartReader, incoming: Incoming, measure: int, may_stop: bool) -> None:
    drain_limit = 2 * measure + CHUNK
    while chunk := await part.read_chunk(CHUNK):
        async for data in part.decode_iter(chunk):
            await incoming.take(bytes(data))
        if incoming.size > measure:
            if may_stop:
                return  # refused on size whatever follows: leave the rest unread
            if incoming.size > drain_limit:
                raise Refused(413, "file too large")


class RestFiles(Surface):
    """`…/{chatId}/file…` (spec §2.12-2.15, §4): the chat v2 REST envelope (§2.16)."""

    cause = CLIENT_REST

    def identified(self, form: Form) -> bool:
        return all(form.params.get(name) for name in ("userId", "secureKey", "alias"))

    async def session_of(self, request: web.Request, form: Form) -> ChatSession:
        chat_id = request.match_info["chatId"]
        return await self.files.chat.authenticate(
            chat_id, form.params["userId"], form.params["secureKey"]
        )

    def fallback_options(self, request: web.Request) -> FileOptions:
        return self.files.options(request.match_info["serviceName"])

    async def limits(self, call: Call) -> Reply:
        session = await call.session()
        return {**envelope(session), "userData": self.files.limits(session)}

    async def upload(self, call: Call) -> Reply:
        outcome, file_id = await self.upload_file(call)
        reply = self._changed(outcome)
        reply["userData"] = {"file-id": file_id}
        reply["nextPosition"] = outcome.session.next_position
        return reply

    async def download(self, call: Call, file_id: str) -> web.Response:
        return await self.download_file(call, file_id)

    async def delete(self, call: Call, file_id: str) -> Reply:
        outcome = await self.delete_file(call, file_id)
        return {**self._changed(outcome), "nextPosition": outcome.session.next_position}

    @staticmethod
    def _changed(outcome: Outcome) -> Reply:
        """The envelope of a file change: `messages:[]` and the `chatId` (spec §2.16)."""
        session = outcome.session
        return {**envelope(session, []), "chatId": session.chat_id}

    def add_routes(self, app: web.Application, api: RestApi) -> None:
        base = f"{ROOT}/{{serviceName}}/{{chatId:[^/]*}}/file"
        download = self._file_route(api, self.download, html_failure)
        app.router.add_route("*", f"{base}/limits", api.route(self.limits))
        app.router.add_route("*", base, api.route(self.upload, self.receive))
        app.router.add_route("*", f"{base}/{{fileId}}/download", download)
        app.router.add_route("*", f"{base}/{{fileId}}/delete", self._file_route(api, self.delete))
        app.router.add_route("*", f"{base}/{{fileId}}", download)  # GMS's example URL (C-33)

    @staticmethod
    def _file_route(
        api: RestApi,
        handler: Callable[[Call, str], Awaitable[Reply | web.StreamResponse]],
        failure: Failure | None = None,
    ) -> Answer:
        """An endpoint of one file: the handler gets the path's `fileId`."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            file_id = request.match_info["fileId"]
            return await api.serve(
                request,
                lambda req: api.answer(req, lambda call: handler(call, file_id), None, failure),
            )

        return endpoint


class NtfCall(Fields):
    """A chat-ntf request: `operation` and `secureKey` are required (167, 153)."""

    def __init__(self, chat: ChatEngine, form: Form) -> None:
        super().__init__(form)
        self.chat = chat
        self.operation = self.require("operation", e.OPERATION_MISSING)
        self._secure_key = self.require("secureKey", e.SECURE_KEY_MISSING)

    async def session(self, allow_ended: bool = False) -> ChatSession:
        self.validate()
        return await self.chat.by_secure_key(self._secure_key, allow_ended)


@dataclass(frozen=True)
class NtfOperation:
    run: Callable[[NtfCall], Awaitable[Reply | web.StreamResponse]]
    failure: Failure = json_failure


class NtfFiles(Surface):
    """`POST /genesys/2/chat-ntf` (spec §4.2-§4.7): files for CometD clients, by
    `secureKey` alone (no service, no cookies, no Basic auth), with its own reply shapes."""

    cause = CHAT_NTF
    UPLOAD = "fileUpload"

    def __init__(self, files: ChatFiles) -> None:
        super().__init__(files)
        download = NtfOperation(self.download, html_failure)
        self.operations: dict[str, NtfOperation] = {
            "fileGetLimits": NtfOperation(self.limits),
            self.UPLOAD: NtfOperation(self.upload),
            "fileDownload": download,
            "download": download,  # the HTML form of GMS's example (C-36)
            "fileDelete": NtfOperation(self.delete),
        }

    def identified(self, form: Form) -> bool:
        return bool(form.params.get("operation") and form.params.get("secureKey"))

    async def session_of(self, request: web.Request, form: Form) -> ChatSession:
        return await self.files.chat.by_secure_key(form.params["secureKey"])

    def fallback_options(self, request: web.Request) -> FileOptions:
        return self.files.loosest_options()

    def wants_file(self, form: Form) -> bool:
        return form.params.get("operation", self.UPLOAD) == self.UPLOAD

    async def answer(self, request: web.Request) -> web.StreamResponse:
        return await guarded(request, lambda: self._answer(request), json_failure)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        """The operation's reply; once the operation is known, its failures are its own
        (HTML for downloads)."""
        form = await read_form(request, self.receive)
        try:
            call = NtfCall(self.files.chat, form)
            operation = self.operations.get(call.operation)
            if operation is None:
                if call.operation:
                    call.problems.append(e.OPERATION_UNKNOWN)
                raise e.invalid(*call.problems)
            return await guarded(request, lambda: _respond(operation, call), operation.failure)
        finally:
            await form.close()

    async def limits(self, call: NtfCall) -> Reply:
        """The limits inside a `Notice` that is not part of the transcript (spec §4.5)."""
        session = await call.session()
        notice = {
            "from": session.client.to_wire(),
            "text": LIMITS_NOTICE,
            "type": m.NOTICE,
            "utcTime": event_time(self.files.config),
            "userData": self.files.limits(session),
        }
        return {"messages": [notice], **self._status(session)}

    async def upload(self, call: NtfCall) -> Reply:
        outcome, file_id = await self.upload_file(call)
        return {**self._status(outcome.session), "userData": {"file-id": file_id}}

    async def download(self, call: NtfCall) -> web.Response:
        file_id = call.require("fileId", e.FILE_ID_MISSING)
        return await self.download_file(call, file_id)

    async def delete(self, call: NtfCall) -> Reply:
        file_id = call.require("fileId", e.FILE_ID_MISSING)
        outcome = await self.delete_file(call, file_id)
        return self._status(outcome.session)

    @staticmethod
    def _status(session: ChatSession) -> Reply:
        return {"chatEnded": session.ended, "statusCode": 0, "secureKey": session.secure_key}


async def _respond(operation: NtfOperation, call: NtfCall) -> web.StreamResponse:
    return respond(await operation.run(call))


# -- wiring ----------------------------------------------------------------------------

CHAT_FILES = web.AppKey("chat_files", ChatFiles)


def setup(app: web.Application, api: RestApi, chat: ChatEngine, store: FileStore) -> ChatFiles:
    """Add the REST file routes and chat-ntf to the application; the store starts and
    closes with it, and a chat's files are dropped when it ends."""
    files = ChatFiles(chat, store)
    chat.observers.append(files)
    RestFiles(files).add_routes(app, api)
    ntf = NtfFiles(files)

    async def chat_ntf(request: web.Request) -> web.StreamResponse:
        return await api.serve(request, ntf.answer)

    app.router.add_route("*", NTF_PATH, chat_ntf)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await store.start()
        yield
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    app[CHAT_FILES] = files
    return files
