"""The two parties of a benchmark chat: a customer on Chat API v2 over CometD websocket, and an
agent desk on the agent API (REST with a session cookie, CometD websocket notifications).

Both measure the other side: a message's text ends with the ``time.time_ns()`` taken when it
was sent, and its arrival is recorded in the direction's ``bench_stats.Recorder`` (customer to
agent: ``c2a``, agent to customer: ``a2c``); a typing event received counts as an untimed
delivery of its direction. No server code is imported: everything goes over the wire.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from bayeux_client import BayeuxClient, BayeuxError, Endpoint, Message
from bench_stats import Recorder

ERRORS = (BayeuxError, OSError, TimeoutError, aiohttp.ClientError)
"""What a party's set-up or request may fail with (counted, never fatal to the run)."""
CSRF_HEADER = "X-CSRF-TOKEN"
"""The agent API's CSRF token: answered on GET /api/v2/me, sent back on every POST."""
SLOT_KEY = "benchSlot"
"""userData key carrying the chat's slot, so its agent (maybe in another worker process)
knows the chat's place in the shared schedule."""


@dataclass
class Directions:
    """One worker's recorders: a direction each, and one for errors and protocol counts."""

    c2a: Recorder
    a2c: Recorder
    control: Recorder


def message_text(sent_ns: int) -> str:
    return f"Hello, how can I help? {sent_ns}"


def sent_ns_of(text: Any) -> int | None:
    """The send time a benchmark message carries at its end (None for any other text)."""
    if not isinstance(text, str):
        return None
    tail = text.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else None


class CustomerClient(BayeuxClient):
    """A GMS chat v2 customer over CometD websocket: requestChat, then startTyping and
    sendMessage when the schedule says so. Replies and notifications arrive as chat v2
    envelopes on the service channel."""

    def __init__(self, endpoint: Endpoint, service: str, slot: int, rec: Directions) -> None:
        super().__init__(endpoint, "websocket", rec.control)
        self.channel = f"/service/chatV2/{service}"
        self.slot = slot
        self.rec = rec
        self.secure_key: str | None = None
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()  # requestChat answered
        self.joined: asyncio.Future[None] = loop.create_future()  # an agent joined

    async def open_chat(self, timeout: float, deadline: float) -> None:
        """Handshake, start the connect loop (until ``deadline``), request a chat and wait
        until an agent joins."""
        await self.handshake()
        await self.start(deadline)
        self.publish(self.channel, {"operation": "requestChat", "nickname": f"c{self.slot}",
                                    "userData": {SLOT_KEY: str(self.slot)}})
        async with asyncio.timeout(timeout):
            await self.started
            await self.joined

    def send(self, now_ns: int) -> None:
        """startTyping then sendMessage, in one frame."""
        self.publish(self.channel, {"operation": "startTyping", "secureKey": self.secure_key})
        self.publish(self.channel, {"operation": "sendMessage", "secureKey": self.secure_key,
                                    "message": message_text(time.time_ns())})
        self.rec.c2a.published(now_ns, 1)

    def _dispatch(self, messages: list[Message], now: int) -> None:
        for message in messages:
            data = message.get("data")
            if data is None:
                self._on_reply(message, now)
            elif message.get("channel") == self.channel and isinstance(data, dict):
                self._on_envelope(data, now)
            else:
                self.sink.error("customer: unexpected message", str(message)[:300])

    def _on_envelope(self, data: dict[str, Any], now: int) -> None:
        if data.get("statusCode") != 0:
            self.sink.error("customer: error notification", str(data)[:300])
            self._fail(BayeuxError(f"chat error: {data}"))
            return
        if isinstance(data.get("secureKey"), str):
            self.secure_key = data["secureKey"]
            if not self.started.done():
                self.started.set_result(None)
        for event in data.get("messages") or ():
            self._on_event(event, now)
        if data.get("chatEnded"):
            self.sink.error("customer: chat ended")

    def _on_event(self, event: dict[str, Any], now: int) -> None:
        kind, party = event.get("type"), (event.get("from") or {}).get("type")
        if party == "Agent":
            if kind == "Message":
                sent = sent_ns_of(event.get("text"))
                if sent is not None:
                    self.rec.a2c.delivered(now, sent)
            elif kind == "TypingStarted":
                self.rec.a2c.delivered_untimed(now)
            elif kind == "ParticipantJoined" and not self.joined.done():
                self.joined.set_result(None)
        elif party == "Client" and kind == "Message":
            self.rec.c2a.acked(now, True, 1)  # the reply to our sendMessage: committed

    def _fail(self, exc: BaseException) -> None:
        for future in (self.started, self.joined):
            if not future.done():
                future.set_exception(exc)


class AgentCometd(BayeuxClient):
    """The agent's CometD websocket at /api/v2/notifications; `/v2/me/*` data goes to the desk."""

    def __init__(self, endpoint: Endpoint, desk: AgentDesk) -> None:
        super().__init__(endpoint, "websocket", desk.rec.control)
        self.desk = desk

    def _dispatch(self, messages: list[Message], now: int) -> None:
        for message in messages:
            data = message.get("data")
            if data is None:
                self._on_reply(message, now)
            elif isinstance(data, dict):
                self.desk.on_notification(data, now)


class AgentDesk:
    """One agent: logs in (Basic, then the session cookie), starts a contact center session,
    subscribes to `/v2/me/*`, goes Ready, accepts every chat offered, and sends StartTyping
    then SendMessage when the schedule says so."""

    def __init__(self, base_url: str, name: str, password: str, rec: Directions) -> None:
        self.base = base_url.rstrip("/")
        self.name = name
        self.rec = rec
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.cometd = AgentCometd(Endpoint.parse(self.base + "/api/v2/notifications"), self)
        self.headers: dict[str, str] = {}  # sent with every POST: the CSRF token
        self.chats: dict[str, int] = {}  # accepted chat id -> slot
        self.accepting = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def log_in(self, deadline: float) -> None:
        async with self.http.get(self.base + "/api/v2/me", headers=self.auth) as response:
            if response.status != 200:
                raise BayeuxError(f"agent login: HTTP {response.status} {await response.text()}")
            csrf = response.headers.get(CSRF_HEADER)
            if csrf:  # the session cookie's changes must carry it
                self.headers[CSRF_HEADER] = csrf
        cookies = [f"{c.key}={c.value}" for c in self.http.cookie_jar]
        self.cometd.jar.update(cookies)
        await self.post("/api/v2/me", "StartContactCenterSession", channels=["chat"])
        await self.cometd.handshake()
        await self.cometd.subscribe(["/v2/me/*"])
        await self.cometd.start(deadline)
        await self.post("/api/v2/me/channels/chat", "Ready")

    async def post(self, path: str, operation: str, **fields: Any) -> None:
        body = {"operationName": operation, **fields}
        async with self.http.post(self.base + path, json=body, headers=self.headers) as response:
            if response.status != 200:
                raise BayeuxError(f"{operation}: HTTP {response.status} {await response.text()}")

    def on_notification(self, data: dict[str, Any], now: int) -> None:
        chat = data.get("chat") or {}
        kind = data.get("notificationType")
        if kind == "NewMessages":
            for event in data.get("messages") or ():
                self._on_event(event, now)
        elif kind == "StatusChange":
            state = chat.get("state")
            if state == "Invited":
                self._spawn(self._accept(str(chat.get("id")), chat.get("userData") or {}))
            elif state in ("Completed", "Revoked"):
                self.rec.control.error(f"agent: chat {state}")

    def _on_event(self, event: dict[str, Any], now: int) -> None:
        if (event.get("from") or {}).get("type") != "Client":
            return
        kind = event.get("type")
        if kind == "Message":
            sent = sent_ns_of(event.get("text"))
            if sent is not None:
                self.rec.c2a.delivered(now, sent)
        elif kind == "TypingStarted":
            self.rec.c2a.delivered_untimed(now)

    async def _accept(self, chat_id: str, user_data: dict[str, Any]) -> None:
        slot = str(user_data.get(SLOT_KEY, ""))
        if not slot.isdigit():
            self.rec.control.error("agent: offered a chat without a slot", str(user_data))
            return
        self.accepting += 1
        try:
            await self.post(f"/api/v2/me/chats/{chat_id}", "Accept")
            self.chats[chat_id] = int(slot)
        except ERRORS as exc:
            self.rec.control.error("agent: accept failed", str(exc))
        finally:
            self.accepting -= 1

    def send(self, chat_id: str, now_ns: int) -> None:
        self.rec.a2c.published(now_ns, 1)
        self._spawn(self._send(chat_id))

    async def _send(self, chat_id: str) -> None:
        path = f"/api/v2/me/chats/{chat_id}"
        try:
            await self.post(path, "StartTyping")
            await self.post(path, "SendMessage", text=message_text(time.time_ns()))
        except ERRORS as exc:
            self.rec.a2c.acked(time.time_ns(), False, 0)
            self.rec.control.error("agent: send failed", str(exc))
        else:
            self.rec.a2c.acked(time.time_ns(), True, 1)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.cometd.close()
        await self.http.close()
