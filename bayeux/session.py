"""One server-side Bayeux session: its outgoing queue, the held /meta/connect, ack batches.

A session does no I/O itself. Transports attach a push link (websocket) or hold a connect
(HTTP); the session tells them when there is something to send.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .protocol import Message

if TYPE_CHECKING:
    from .server import BayeuxServer


class Delivery:
    """An outgoing event, encoded at most once and shared by every recipient.

    Built from a message (encoded on first use) or from bytes received from another node
    (decoded only if something needs to look inside).
    """

    __slots__ = ("_encoded", "_message", "channel", "replay_id")

    def __init__(self, message: Message) -> None:
        self._message: Message | None = message
        self._encoded: bytes | None = None
        self.channel: str = message["channel"]
        self.replay_id: int | None = None

    @classmethod
    def from_encoded(cls, channel: str, encoded: bytes, replay_id: int | None = None) -> Delivery:
        delivery = cls.__new__(cls)
        delivery._message = None
        delivery._encoded = encoded
        delivery.channel = channel
        delivery.replay_id = replay_id
        return delivery

    @property
    def message(self) -> Message:
        if self._message is None:
            assert self._encoded is not None
            self._message = orjson.loads(self._encoded)
        return self._message

    @property
    def encoded(self) -> bytes:
        if self._encoded is None:
            self._encoded = orjson.dumps(self._message)
        return self._encoded


class PushLink(Protocol):
    """Where a session's messages go as soon as they are queued (a websocket)."""

    def send(self, payload: bytes) -> bool:
        """Write one frame; False if the peer is gone or too slow to take more now."""

    @property
    def writable(self) -> bool: ...


class AckQueue:
    """CometD's batch queue for the ack extension.

    Every queued message is stamped with the open batch number. A /meta/connect reply carries
    the whole queue and closes the batch; messages leave the queue only when the client
    acknowledges their batch, so a lost reply is sent again on the next connect.
    """

    __slots__ = ("_items", "batch")

    def __init__(self) -> None:
        self._items: deque[tuple[int, Delivery]] = deque()
        self.batch = 1

    def __len__(self) -> int:
        return len(self._items)

    def append(self, delivery: Delivery) -> None:
        self._items.append((self.batch, delivery))

    def popleft(self) -> None:
        self._items.popleft()

    def take(self) -> tuple[list[Delivery], int]:
        """Everything unacknowledged, and the number of the batch this send closes."""
        closed = self.batch
        self.batch += 1
        return [delivery for _, delivery in self._items], closed

    def items(self) -> list[tuple[int, Delivery]]:
        return list(self._items)

    def restore(self, batch: int, delivery: Delivery) -> None:
        self._items.append((batch, delivery))

    def acknowledge(self, batch: int) -> None:
        items = self._items
        while items and items[0][0] <= batch:
            items.popleft()


class HeldConnect:
    """A /meta/connect reply waiting for messages or for its timeout.

    A timeout of zero makes it complete at once; transports treat both kinds alike:
    `await held.wait()` (HTTP) or `held.on_complete(callback)` (websocket), then ask the
    server to `finish_connect(held)`.
    """

    __slots__ = (
        "_listener",
        "_released",
        "_timer",
        "_waiter",
        "done",
        "reply",
        "session",
        "started",
        "superseded",
    )

    def __init__(
        self,
        session: ServerSession,
        reply: Message,
        timeout: float,
        released: Callable[[], None] | None = None,
    ) -> None:
        self.session = session
        self.reply = reply
        self.superseded = False
        self._released = released
        self._listener: Callable[[HeldConnect], None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.done = timeout <= 0
        self._timer = None if self.done else loop.call_later(timeout, self.complete)
        if not self.done:
            session.held = self

    def complete(self) -> None:
        """Answer now (messages arrived, timeout, session removed, or superseded)."""
        if self._finish():
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            if self._listener is not None:
                self._listener(self)

    def cancel(self) -> None:
        """Forget the connect without answering: its connection is gone."""
        self._finish()

    async def wait(self) -> None:
        if not self.done:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def on_complete(self, listener: Callable[[HeldConnect], None]) -> None:
        if self.done:
            listener(self)
        else:
            self._listener = listener

    def _finish(self) -> bool:
        if self.done and self._timer is None:
            return False
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session.held is self:
            self.session.held = None
            self.session.last_seen = asyncio.get_running_loop().time()
        if self._released is not None:
            self._released()
            self._released = None
        return True


class ServerSession:
    """The server half of one Bayeux client."""

    def __init__(self, server: BayeuxServer, session_id: str, browser_id: str | None) -> None:
        self.server = server
        self.id = session_id
        self.browser_id = browser_id
        self.user_id: str | None = None
        self.transport: str | None = None
        self.subscriptions: set[str] = set()
        self.attributes: dict[str, Any] = {}
        self.held: HeldConnect | None = None
        self.link: PushLink | None = None
        self.connected = False
        self.removed = False
        self.remove_reason: str | None = None
        self.connect_only = server.options.meta_connect_deliver_only
        self.last_seen = asyncio.get_running_loop().time()
        self._queue: deque[Delivery] = deque()
        self.ack: AckQueue | None = None
        self.ack_batch_sent: int | None = None
        """The ack batch closed by the /meta/connect reply being sent."""
        self.dropped = 0
        """Messages dropped by the `drop-oldest` slow-consumer policy."""
        self._held_channels: dict[str, list[Delivery]] | None = None
        self.replay_positions: dict[str, int] = {}
        """Durable channel -> the last replay id queued for this session: where another node
        resumes it after a handover."""

    def __repr__(self) -> str:
        return f"<ServerSession {self.id} user={self.user_id} transport={self.transport}>"

    # -- application API ---------------------------------------------------------------
    def deliver(self, channel: str, data: Any, **fields: Any) -> None:
        """Send one message to this session only (replies from services, private events)."""
        self.server.send_to(self, Delivery({"channel": channel, "data": data, **fields}))

    def disconnect(self) -> None:
        """Remove this session from the server; the client is told to re-handshake."""
        self.server.remove_session(self, "server")

    # -- queueing ----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self.ack) if self.ack is not None else len(self._queue)

    def enable_ack(self) -> None:
        """Switch to acknowledged delivery: connect-only, with batches kept until acked."""
        self.ack = AckQueue()
        self.connect_only = True

    def enqueue(self, delivery: Delivery, replay: bool = False) -> None:
        """Queue a message and wake whatever will carry it to the client.

        Replayed history may go past `max_queue`: it is bounded by the channel's retention.
        """
        if self.removed:
            return
        held = self._held_channels
        if held is not None and delivery.channel in held:
            held[delivery.channel].append(delivery)
            return
        queue: AckQueue | deque[Delivery] = self.ack if self.ack is not None else self._queue
        if len(queue) >= self.server.options.max_queue and not replay:
            if self.server.options.slow_consumer_policy == "disconnect":
                # Removed on the next loop turn: we may be inside a fan-out loop over the
                # subscription index, which must not change under it.
                self.removed = True
                asyncio.get_running_loop().call_soon(
                    self.server.remove_session, self, "slow_consumer"
                )
                return
            queue.popleft()
            self.dropped += 1
        queue.append(delivery)
        if delivery.replay_id is not None:
            self.replay_positions[delivery.channel] = delivery.replay_id
        if self.link is not None and not self.connect_only:
            self.server.schedule_flush(self)
        elif self.held is not None:
            self.held.complete()

    def enqueue_many(self, deliveries: Iterable[Delivery], replay: bool = False) -> None:
        for delivery in deliveries:
            self.enqueue(delivery, replay)

    def hold_channel(self, channel: str) -> None:
        """Keep live messages of a channel aside while its history is being fetched."""
        if self._held_channels is None:
            self._held_channels = {}
        self._held_channels.setdefault(channel, [])

    def release_channel(self, channel: str) -> list[Delivery]:
        """Stop holding a channel; returns what arrived meanwhile, in order."""
        if self._held_channels is None:
            return []
        held = self._held_channels.pop(channel, [])
        if not self._held_channels:
            self._held_channels = None
        return held

    def take_for_connect(self) -> tuple[list[Delivery], int | None]:
        """What a /meta/connect reply carries, and its ack batch (None without ack)."""
        if self.ack is not None:
            return self.ack.take()
        return self.drain(), None

    def drain(self) -> list[Delivery]:
        """Take every queued message (non-ack sessions only)."""
        if self.ack is not None or not self._queue:
            return []
        items = list(self._queue)
        self._queue.clear()
        return items

    # -- handing over to another process --------------------------------------------------
    def snapshot(self) -> bytes:
        """Everything another node needs to carry on with this session, as JSON: identity,
        subscriptions, queued (or unacknowledged) messages and plain attributes."""
        queue: list[Any]
        if self.ack is not None:
            queue = [[batch, orjson.Fragment(d.encoded)] for batch, d in self.ack.items()]
        else:
            queue = [orjson.Fragment(d.encoded) for d in self._queue]
        return orjson.dumps(
            {
                "id": self.id,
                "browser": self.browser_id,
                "user": self.user_id,
                "subscriptions": sorted(self.subscriptions),
                "ack": self.ack.batch if self.ack is not None else None,
                "connect_only": self.connect_only,
                "queue": queue,
                "replay": self.replay_positions,
                "attributes": _plain(self.attributes),
            }
        )

    def restore_queue(self, snapshot: dict[str, Any]) -> None:
        """Refill the queue from a snapshot (the session is new and empty)."""
        self.connect_only = bool(snapshot.get("connect_only"))
        if snapshot.get("ack") is not None:
            self.enable_ack()
            assert self.ack is not None
            for batch, message in snapshot["queue"]:
                self.ack.restore(batch, Delivery(message))
            self.ack.batch = int(snapshot["ack"])
        else:
            self._queue.extend(Delivery(message) for message in snapshot["queue"])

    def flush_link(self) -> bool:
        """Push queued messages down the websocket in one frame; False if the link is too
        slow to take them now (the caller retries later)."""
        link = self.link
        if link is None or self.connect_only or not self._queue:
            return True
        if not link.writable:
            return False
        items = self.drain()
        if not link.send(b"[" + b",".join([d.encoded for d in items]) + b"]"):
            # The link is gone: keep the messages, in order, for the next connect.
            self._queue.extendleft(reversed(items))
        return True


def _plain(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes that survive a handover: public names with JSON values."""
    plain: dict[str, Any] = {}
    for key, value in attributes.items():
        if key.startswith("_"):
            continue
        try:
            orjson.dumps(value)
        except TypeError:
            continue
        plain[key] = value
    return plain
