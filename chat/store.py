"""Chat stores: where chat sessions, transcripts and chat timers live.

Every change to a chat goes through `commit(session, expected_version, events)`: the new
state and its new events are written together only if nobody changed the chat meanwhile
(optimistic concurrency), so two nodes working on one chat never lose an event or reuse an
index. The memory store serves one process; the Redis store (redis_store.py) many.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from redis.exceptions import RedisError, WatchError

from .model import ChatSession, Event


class StoreUnavailable(Exception):
    """The store cannot answer now; the client may retry (`statusCode` 1)."""


@contextlib.contextmanager
def redis_failures() -> Iterator[None]:
    """Redis failing (down, or the connection lost) as `StoreUnavailable`, which the APIs
    answer with 503; a WATCH conflict is no failure and passes through."""
    try:
        yield
    except WatchError:
        raise
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc


T = TypeVar("T")


class Recent(Generic[T]):
    """A map that keeps its `size` most recently used entries: what a node remembers of a
    shared store's answers, so that it need not ask again."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, item: T) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        self._items.pop(key, None)

    def drop_where(self, forget: Callable[[T], bool]) -> None:
        for key in [key for key, item in self._items.items() if forget(item)]:
            del self._items[key]


class ChatStore(ABC):
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abstractmethod
    async def create(self, session: ChatSession, events: list[Event]) -> None:
        """Store a new chat with its first events (indexes already assigned)."""

    @abstractmethod
    async def load(self, chat_id: str) -> ChatSession | None: ...

    async def load_for_change(self, chat_id: str) -> ChatSession | None:
        """The chat to change and commit: a store may answer from the copy it last loaded or
        committed, since `commit` refuses a version that is no longer current."""
        return await self.load(chat_id)

    @abstractmethod
    async def commit(
        self, session: ChatSession, expected_version: int, events: list[Event]
    ) -> bool:
        """Write `session` and append `events` if the stored version is still
        `expected_version`; then `session.version` is the new version. False on conflict."""

    @abstractmethod
    async def events(self, chat_id: str, from_index: int = 1) -> list[Event]:
        """Transcript events with index >= from_index, ascending."""

    @abstractmethod
    async def find_by_secure_key(self, key: str) -> str | None:
        """The chat id a secure key opens, or None. A store may remember an answer after
        another node dropped the key (the engine checks the key against the chat)."""

    @abstractmethod
    async def index_secure_key(self, key: str, chat_id: str, ttl_s: float | None = None) -> None:
        """Make `key` open `chat_id` (for ever, or for `ttl_s` seconds)."""

    @abstractmethod
    async def drop_secure_key(self, key: str) -> None: ...

    @abstractmethod
    async def retire(self, chat_id: str, after_s: float) -> None:
        """Forget the chat (state, transcript) `after_s` seconds from now."""

    @abstractmethod
    async def schedule(self, chat_id: str, kind: str, due_ms: int) -> None:
        """Set (or move) the chat's timer of this kind."""

    @abstractmethod
    async def cancel(self, chat_id: str, kind: str) -> None: ...

    async def set_timers(
        self, chat_id: str, due: dict[str, int], cancel: tuple[str, ...] = ()
    ) -> None:
        """Cancel the chat's timers of the `cancel` kinds, then set (or move) those in `due`
        (kind -> due ms): what a message does to the idle timers, in one round trip where
        the store is across the network."""
        for kind in cancel:
            await self.cancel(chat_id, kind)
        for kind, due_ms in due.items():
            await self.schedule(chat_id, kind, due_ms)

    @abstractmethod
    async def claim_due(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        """Timers due by now, each handed to exactly one caller (one node)."""


class MemoryChatStore(ChatStore):
    """One process. Nothing here awaits between read and write, so commits never conflict."""

    def __init__(self) -> None:
        self._sessions: dict[str, ChatSession] = {}
        self._events: dict[str, list[Event]] = {}
        self._keys: dict[str, str] = {}
        self._timers: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[int, str, str]] = []
        self._expiries: set[asyncio.TimerHandle] = set()

    async def close(self) -> None:
        for handle in self._expiries:
            handle.cancel()

    async def create(self, session: ChatSession, events: list[Event]) -> None:
        if session.chat_id in self._sessions:
            raise ValueError(f"chat {session.chat_id} exists")
        session.version = 1
        self._sessions[session.chat_id] = _copy(session)
        self._events[session.chat_id] = list(events)

    async def load(self, chat_id: str) -> ChatSession | None:
        stored = self._sessions.get(chat_id)
        return _copy(stored) if stored is not None else None

    async def commit(
        self, session: ChatSession, expected_version: int, events: list[Event]
    ) -> bool:
        stored = self._sessions.get(session.chat_id)
        if stored is None or stored.version != expected_version:
            return False
        session.version = expected_version + 1
        self._sessions[session.chat_id] = _copy(session)
        self._events[session.chat_id].extend(events)
        return True

    async def events(self, chat_id: str, from_index: int = 1) -> list[Event]:
        return [e for e in self._events.get(chat_id, ()) if e.index >= from_index]

    async def find_by_secure_key(self, key: str) -> str | None:
        return self._keys.get(key)

    async def index_secure_key(self, key: str, chat_id: str, ttl_s: float | None = None) -> None:
        self._keys[key] = chat_id
        if ttl_s is not None:
            self._later(ttl_s, lambda: self._keys.pop(key, None))

    async def drop_secure_key(self, key: str) -> None:
        self._keys.pop(key, None)

    async def retire(self, chat_id: str, after_s: float) -> None:
        def forget() -> None:
            session = self._sessions.pop(chat_id, None)
            self._events.pop(chat_id, None)
            if session is not None:
                for key in (session.secure_key, session.previous_secure_key):
                    if key and self._keys.get(key) == chat_id:
                        del self._keys[key]

        self._later(after_s, forget)

    async def schedule(self, chat_id: str, kind: str, due_ms: int) -> None:
        self._timers[(chat_id, kind)] = due_ms
        heapq.heappush(self._heap, (due_ms, chat_id, kind))

    async def cancel(self, chat_id: str, kind: str) -> None:
        self._timers.pop((chat_id, kind), None)

    async def claim_due(self, now_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        due: list[tuple[str, str]] = []
        while self._heap and self._heap[0][0] <= now_ms and len(due) < limit:
            when, chat_id, kind = heapq.heappop(self._heap)
            if self._timers.get((chat_id, kind)) == when:  # not moved or cancelled since
                del self._timers[(chat_id, kind)]
                due.append((chat_id, kind))
        return due

    def _later(self, delay: float, callback: Callable[[], object]) -> None:
        def run() -> None:
            self._expiries.discard(handle)
            callback()

        handle = asyncio.get_running_loop().call_later(delay, run)
        self._expiries.add(handle)


def _copy(session: ChatSession) -> ChatSession:
    """Sessions are handed out as copies, as a networked store would."""
    return ChatSession.from_record(session.to_record())
