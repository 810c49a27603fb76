"""GMS Chat API v2 over CometD: operations published on `/service/chatV2/{serviceName}`.

A client publishes `{"operation": ..., "secureKey": ..., ...}` on the service channel. The
Bayeux publish reply is always successful; the chat result, success or failure, comes back as
a chat v2 envelope delivered to the publishing client only, on the same channel.

Every other visible event of a chat (the agent's, External or system ones, the client's own
REST events) is delivered to the one CometD client bound to the chat, one event per message,
on whichever node that client is connected. A Bayeux client is bound to at most one chat; the
chat it is bound to is kept in its session attributes, so that a node taking the session over
can point the chat's notifications at itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bayeux import BayeuxServer, Delivery, ServerSession, ServiceRequest
from bayeux.engine import EngineUnavailable

from . import errors as e
from . import model as m
from .config import SERVICE_NAME
from .engine import Cause, ChatEngine
from .model import Binding, ChatSession, Event
from .passwords import verify_password

log = logging.getLogger("gms.chat.cometd")

CHANNEL_PREFIX = "/service/chatV2/"
BOUND_CHAT = "gms.chatV2"
"""Session attribute: `{"chatId": ..., "service": ...}` of the chat the client is bound to
(plain JSON, so it is handed over with the session)."""
_LOCK = "_gms.chatV2.lock"
"""Session attribute: serialises one client's operations (not handed over)."""
BOGUS_IDS = {"alias": "0", "userId": "deprecated", "chatId": "deprecated"}
PUSH_PREFIX = "push_notification_"
PUSH_REQUIRED = ("push_notification_deviceid", "push_notification_type")

Data = dict[str, Any]


def channel_of(service: str) -> str:
    return CHANNEL_PREFIX + service


# -- request parameters ----------------------------------------------------------------------


class Params:
    """An operation's `data`, read leniently (strings or numbers), with every missing or
    malformed parameter collected so that they are reported together."""

    def __init__(self, data: Data) -> None:
        self.data = data
        self.problems: list[int] = []

    def text(self, name: str, missing: int | None = None) -> str | None:
        """A string parameter (a number is taken as its decimal text); `missing` makes it
        required (non-empty)."""
        value = _as_text(self.data.get(name))
        if missing is not None and not value:
            self.problems.append(missing)
            return None
        return value

    def position(self, name: str, missing: int | None = None) -> int | None:
        """A non-negative integer, given as a number or a string."""
        raw = self.data.get(name)
        if raw is None:
            if missing is not None:
                self.problems.append(missing)
            return None
        value = _as_int(raw)
        if value is None or value < 0:
            self.problems.append(e.TRANSCRIPT_POSITION_INVALID)
            return None
        return value

    def user_data(self, name: str = "userData", required: bool = False) -> dict[str, str] | None:
        """A JSON object, or a string holding one; values become strings. `required` makes
        a missing or empty one an error, as a malformed one always is (105)."""
        raw = self.data.get(name)
        if isinstance(raw, str):
            raw = _json_object(raw)
        if raw is None and not required:
            return None
        if not isinstance(raw, dict) or (required and not raw):
            self.problems.append(e.USER_DATA_MISSING)
            return None
        return {str(k): v if isinstance(v, str) else _json(v) for k, v in raw.items()}

    def check(self) -> None:
        if self.problems:
            raise e.invalid(*sorted(set(self.problems)))


def _json_object(text: str) -> Any:
    """A string's JSON value: None when blank, the text itself (malformed) when not JSON."""
    if not text.strip():
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    return None


def push_binding(user_data: dict[str, str] | None) -> dict[str, str] | None:
    """The `push_notification_*` keys when both required ones are there, else None."""
    if not user_data or not all(user_data.get(key) for key in PUSH_REQUIRED):
        return None
    return {k: v for k, v in user_data.items() if k.startswith(PUSH_PREFIX)}


def _error(code: int, advice: str) -> e.ChatError:
    return e.invalid(e.ErrorCode(code, advice))


# -- one operation -----------------------------------------------------------------------------


@dataclass
class Call:
    """One published operation."""

    request: ServiceRequest
    service: str
    params: Params
    chat: ChatSession | None = None
    """The chat, once identified (error notifications then carry its state)."""
    check: Callable[[ChatSession], None] | None = None
    """What the chat must still be when the operation changes it (see `_bound_chat`)."""

    @property
    def session(self) -> ServerSession:
        return self.request.session

    @property
    def cause(self) -> Cause:
        return Cause("client", "cometd", self.session.id, check=self.check)


@dataclass
class Reply:
    """What an operation answers: the chat after it, and the events the reply carries."""

    chat: ChatSession
    events: list[Event] = field(default_factory=list)
    credentials: bool = True
    """False: no `secureKey` and `userId` (the disconnect reply)."""


Handler = Callable[[Call], Awaitable[Reply]]


class CometdChat:
    """The `/service/chatV2/*` service, and the chat observer that notifies bound clients."""

    def __init__(self, bayeux: BayeuxServer, chat: ChatEngine) -> None:
        self.bayeux = bayeux
        self.chat = chat
        self.enabled = chat.config.enable_notification_mode  # read once: "not dynamic"
        self._background: set[asyncio.Task[None]] = set()
        self.operations: dict[str, Handler] = {
            "requestChat": self._request_chat,
            "requestNotifications": self._request_notifications,
            "sendMessage": self._send_message,
            "readReceipt": self._read_receipt,
            "startTyping": self._client_event(m.TYPING_STARTED),
            "stopTyping": self._client_event(m.TYPING_STOPPED),
            "disconnect": self._disconnect,
            "pushUrl": self._push_url,
            "updateNickname": self._update_nickname,
            "customNotice": self._client_event(m.CUSTOM_NOTICE),
            "updateData": self._update_data,
        }

    # -- the service ---------------------------------------------------------------------
    async def handle(self, request: ServiceRequest) -> None:
        """Answer one operation. Notifications that arrive for the client meanwhile are held
        back and then sent around the reply in index order, so that a client discarding
        indexes at or below the last one it saw never loses one."""
        session = request.session
        lock = session.attributes.setdefault(_LOCK, asyncio.Lock())
        async with lock:
            session.hold_channel(request.channel)
            data: Data | None = None
            indexes: list[int] = []
            try:
                data, indexes = await self._answer(request)
            finally:
                held = session.release_channel(request.channel)
                _send_in_order(session, request.channel, data, indexes, held)

    async def _answer(self, request: ServiceRequest) -> tuple[Data, list[int]]:
        """The reply or error notification, and the indexes of the events it carries."""
        data = request.data if isinstance(request.data, dict) else {}
        call = Call(request, request.channel[len(CHANNEL_PREFIX) :], Params(data))
        try:
            handler = self._route(call)
            reply = await handler(call)
        except e.ChatError as error:
            return await self._failure(call, error), []
        except Exception:
            reference = secrets.token_hex(8)
            log.exception("chatV2 %s failed (reference %s)", data.get("operation"), reference)
            internal = e.ChatError([e.ErrorCode(e.INTERNAL_ERROR, reference)])
            return self._error_data(call, internal), []
        events = [event.to_wire() for event in reply.events]
        envelope = self._envelope(call.service, reply.chat, events, credentials=reply.credentials)
        return envelope, [event.index for event in reply.events]

    def _route(self, call: Call) -> Handler:
        if not self.enabled:
            raise e.ChatError([e.ErrorCode(e.SESSION_NOT_FOUND, "notification mode is off")])
        if not SERVICE_NAME.match(call.service) or self.chat.config.service(call.service) is None:
            raise e.service_unknown(call.service)
        operation = call.params.data.get("operation")
        if operation is None or operation == "":
            raise _error(e.OPERATION_MISSING, "operation is missing")
        handler = self.operations.get(operation) if isinstance(operation, str) else None
        if handler is None:
            raise _error(e.OPERATION_UNKNOWN, f"unknown operation {operation}")
        return handler

    async def _failure(self, call: Call, error: e.ChatError) -> Data:
        if call.chat is None and error.http == 400:
            # A validation error: still tell the client its chat's state when the key opens one.
            key = call.params.text("secureKey")
            if key:
                with contextlib.suppress(e.ChatError):
                    await self._lookup(call, key, allow_ended=True)
        return self._error_data(call, error)

    # -- operations ----------------------------------------------------------------------
    async def _request_chat(self, call: Call) -> Reply:
        await self._check_auth(call)
        params = call.params
        nickname = params.text("nickname")
        first_name = params.text("firstName")
        last_name = params.text("lastName")
        subject = params.text("subject")
        email = params.text("emailAddress")
        user_data = params.user_data()
        params.check()
        await self._check_one_chat(call, None)
        outcome = await self.chat.request_chat(
            call.service,
            nickname=nickname,
            first_name=first_name,
            last_name=last_name,
            subject=subject,
            email=email,
            user_data=user_data,
            cause=call.cause,
            binding=self._binding(call.session),
            push=push_binding(user_data),
        )
        _remember(call.session, outcome.session)
        return Reply(outcome.session, outcome.events)

    async def _request_notifications(self, call: Call) -> Reply:
        """(Re)bind the chat to this client, then answer with the events from
        `transcriptPosition` (0 or absent: all) up to the bind: everything later reaches the
        client as notifications, so nothing is lost and nothing comes twice."""
        params = call.params
        key = params.text("secureKey", e.SECURE_KEY_MISSING)
        position = params.position("transcriptPosition")
        user_data = params.user_data()
        params.check()
        assert key is not None
        chat = await self._lookup(call, key, allow_ended=True)
        await self._check_one_chat(call, chat.chat_id)
        push = push_binding(user_data) if chat.origin == "cometd" else None
        bound = await self.chat.bind(chat.chat_id, self._binding(call.session), push)
        call.chat = bound
        _remember(call.session, bound)
        events = await self.chat.transcript(bound, position or 1)
        return Reply(bound, [event for event in events if event.index <= bound.last_index])

    async def _send_message(self, call: Call) -> Reply:
        text = call.params.text("message", e.MESSAGE_MISSING)
        message_type = call.params.text("messageType")
        chat = await self._bound_chat(call)
        outcome = await self.chat.client_event(
            chat.chat_id, m.MESSAGE, text, message_type, cause=call.cause
        )
        return Reply(outcome.session, outcome.events)

    def _client_event(self, kind: str) -> Handler:
        """startTyping, stopTyping, customNotice: an event with the optional `message`."""

        async def operation(call: Call) -> Reply:
            text = call.params.text("message")
            chat = await self._bound_chat(call)
            outcome = await self.chat.client_event(chat.chat_id, kind, text, cause=call.cause)
            return Reply(outcome.session, outcome.events)

        return operation

    async def _push_url(self, call: Call) -> Reply:
        url = call.params.text("pushUrl", e.PUSH_URL_MISSING)
        chat = await self._bound_chat(call)
        outcome = await self.chat.client_event(chat.chat_id, m.PUSH_URL, url, cause=call.cause)
        return Reply(outcome.session, outcome.events)

    async def _update_nickname(self, call: Call) -> Reply:
        nickname = call.params.text("nickname", e.NICKNAME_MISSING)
        chat = await self._bound_chat(call)
        assert nickname is not None
        outcome = await self.chat.update_nickname(chat.chat_id, nickname, cause=call.cause)
        return Reply(outcome.session, outcome.events)

    async def _read_receipt(self, call: Call) -> Reply:
        position = call.params.position("transcriptPosition", e.TRANSCRIPT_POSITION_MISSING)
        chat = await self._bound_chat(call)
        assert position is not None
        outcome = await self.chat.read_receipt(chat.chat_id, position, cause=call.cause)
        return Reply(outcome.session)

    async def _update_data(self, call: Call) -> Reply:
        user_data = call.params.user_data(required=True)
        chat = await self._bound_chat(call)
        assert user_data is not None
        outcome = await self.chat.update_data(chat.chat_id, user_data, cause=call.cause)
        return Reply(outcome.session)

    async def _disconnect(self, call: Call) -> Reply:
        chat = await self._bound_chat(call)
        outcome = await self.chat.client_disconnect(chat.chat_id, cause=call.cause)
        return Reply(outcome.session, credentials=False)

    # -- checks --------------------------------------------------------------------------
    async def _lookup(
        self, call: Call, key: str, allow_ended: bool = False, recent: bool = False
    ) -> ChatSession:
        """The chat the secure key opens, on this channel's service (249 otherwise)."""
        chat = await self.chat.by_secure_key(key, allow_ended, recent)
        if chat.service != call.service:
            raise e.session_not_found()
        call.chat = chat
        return chat

    async def _bound_chat(self, call: Call) -> ChatSession:
        """The chat of an operation other than requestChat and requestNotifications: the
        key's chat, which must be bound to this client.

        Checked first on the copy this node last saw (no read); the operation's change
        checks again on the chat it commits (`call.check`), and a copy that fails is read
        again, so a change made on another node meanwhile is never missed."""
        key = call.params.text("secureKey", e.SECURE_KEY_MISSING)
        call.params.check()
        assert key is not None
        chat = await self._lookup(call, key, recent=True)
        if not _bound_to(chat, call.session.id):
            chat = await self._lookup(call, key)
        call.check = self._still_bound(call, key)
        call.check(chat)
        return chat

    def _still_bound(self, call: Call, key: str) -> Callable[[ChatSession], None]:
        """What `_bound_chat` checks, for the chat an operation changes (249 or 311)."""

        def check(chat: ChatSession) -> None:
            call.chat = chat  # for the error notification's state
            if not self.chat.key_opens(chat, key):
                raise e.session_not_found()
            if not _bound_to(chat, call.session.id):
                raise _error(
                    e.CHAT_ALREADY_BOUND,
                    "the chat is not bound to this CometD connection: send requestNotifications",
                )

        return check

    async def _check_one_chat(self, call: Call, chat_id: str | None) -> None:
        """311 when this client is bound to another chat (unless it ended and the
        configuration allows a new one then)."""
        bound = call.session.attributes.get(BOUND_CHAT)
        if not isinstance(bound, dict) or bound.get("chatId") == chat_id:
            return
        if self.chat.config.cometd_allow_new_chat_after_end and await self._ended(
            str(bound.get("chatId"))
        ):
            return
        raise _error(e.CHAT_ALREADY_BOUND, "one chat per CometD connection")

    async def _ended(self, chat_id: str) -> bool:
        try:
            return (await self.chat.load(chat_id, allow_ended=True)).ended
        except e.ChatError:
            return True  # forgotten, or the client left it

    async def _check_auth(self, call: Call) -> None:
        """The `auth` of requestChat on a service with Basic authentication (310)."""
        service = self.chat.service(call.service)
        if not service.basic_auth:
            return
        credentials = _credentials(call.params.data.get("auth"))
        hashed = service.credentials.get(credentials[0]) if credentials else None
        if credentials is None or hashed is None:
            raise _error(e.AUTH_INVALID, "authentication required")
        if not await asyncio.to_thread(verify_password, credentials[1], hashed):
            raise _error(e.AUTH_INVALID, "authentication required")

    def _binding(self, session: ServerSession) -> Binding:
        return Binding(session.id, self.bayeux.engine.node_id)

    # -- envelopes -----------------------------------------------------------------------
    def _envelope(
        self, service: str, chat: ChatSession, messages: list[Data], credentials: bool = True
    ) -> Data:
        """A successful reply or notification (spec-chat-v2 §5.6)."""
        data: Data = {"messages": messages, "chatEnded": chat.ended, "statusCode": 0}
        data.update(self._legacy_ids(chat))
        if credentials:
            data["secureKey"] = chat.secure_key
        else:
            del data["userId"]
        data["nextPosition"] = chat.next_position
        data["monitored"] = False
        return self._on_channel(data, service)

    def _error_data(self, call: Call, error: e.ChatError) -> Data:
        """An error notification: `chatEnded` and `secureKey` once a chat was identified."""
        chat = call.chat
        data: Data = {"statusCode": error.status, "errors": [x.to_wire() for x in error.errors]}
        ended = error.chat_ended if error.chat_ended is not None else chat and chat.ended
        if ended is not None:
            data["chatEnded"] = ended
        if chat is not None:
            data["secureKey"] = chat.secure_key
        data.update(self._legacy_ids(chat))
        return self._on_channel(data, call.service)

    def _legacy_ids(self, chat: ChatSession | None) -> Data:
        if self.chat.config.cometd_legacy_ids != "real":
            return dict(BOGUS_IDS)
        if chat is None:
            return {}
        return {"alias": chat.alias, "userId": chat.user_id, "chatId": chat.chat_id}

    def _on_channel(self, data: Data, service: str) -> Data:
        if self.chat.config.cometd_echo_channel_in_data:
            data["channel"] = channel_of(service)
        return data

    # -- the observer: unsolicited notifications -----------------------------------------
    async def chat_events(self, chat: ChatSession, events: list[Event], cause: Cause) -> None:
        """Deliver each visible event to the chat's bound client, except the events of its own
        CometD operation (its reply carries them)."""
        binding = chat.binding
        if binding is None or _own_operation(cause, binding):
            return
        channel = channel_of(chat.service)
        for event in events:
            if not event.visible:
                continue
            data = self._envelope(chat.service, chat, [event.to_wire()])
            try:
                await self.bayeux.deliver_to_session(binding.node, binding.client_id, channel, data)
            except EngineUnavailable as exc:
                log.warning("chat %s: event %d not delivered: %s", chat.chat_id, event.index, exc)

    # -- Bayeux session life -------------------------------------------------------------
    def session_added(self, session: ServerSession, reason: str) -> None:
        """A session adopted from a node that shut down: its chat's notifications now come
        here."""
        bound = session.attributes.get(BOUND_CHAT)
        if reason == "adopted" and isinstance(bound, dict):
            node = self.bayeux.engine.node_id
            self._spawn(self._rebind(str(bound["chatId"]), session.id, Binding(session.id, node)))

    def session_removed(self, session: ServerSession, reason: str) -> None:
        """The client is gone (not handed over): its chat is no longer bound to anybody, so
        events are only stored until a client sends requestNotifications."""
        bound = session.attributes.get(BOUND_CHAT)
        if reason not in ("handover", "shutdown") and isinstance(bound, dict):
            self._spawn(self._rebind(str(bound["chatId"]), session.id, None))

    async def _rebind(self, chat_id: str, client_id: str, binding: Binding | None) -> None:
        """Point the chat at `binding` if it is still bound to `client_id` (a newer
        requestNotifications from another client wins)."""

        def change(chat: ChatSession) -> list[Event]:
            if chat.binding is not None and chat.binding.client_id == client_id:
                chat.binding = binding
            return []

        # A chat that is gone, or a store that is unavailable: nothing to re-point.
        with contextlib.suppress(e.ChatError):
            await self.chat.change(chat_id, change, Cause("client", "cometd"), allow_ended=True)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for pending binding updates (for tests and shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _bound_to(chat: ChatSession, client_id: str) -> bool:
    return chat.binding is not None and chat.binding.client_id == client_id


def _own_operation(cause: Cause, binding: Binding) -> bool:
    return cause.transport == "cometd" and cause.client_id == binding.client_id


def _remember(session: ServerSession, chat: ChatSession) -> None:
    session.attributes[BOUND_CHAT] = {"chatId": chat.chat_id, "service": chat.service}


def _credentials(auth: Any) -> tuple[str, str] | None:
    """(user, password) from `{"encoded": base64(user:password)}` (preferred) or
    `{"username": ..., "password": ...}`; None when missing or malformed."""
    if not isinstance(auth, dict):
        return None
    encoded = auth.get("encoded")
    if encoded is not None:
        if not isinstance(encoded, str):
            return None
        try:
            text = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, password = text.partition(":")
        return (user, password) if colon else None
    username, secret = auth.get("username"), auth.get("password")
    if isinstance(username, str) and isinstance(secret, str):
        return username, secret
    return None


def _event_index(delivery: Delivery) -> int | None:
    data = delivery.message.get("data")
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict):
        index = messages[0].get("index")
        return index if isinstance(index, int) else None
    return None


def _send_in_order(
    session: ServerSession,
    channel: str,
    reply: Data | None,
    indexes: list[int],
    held: list[Delivery],
) -> None:
    """Queue the reply among the notifications held while it was being made: earlier
    indexes first, the ones it carries itself dropped."""
    first = min(indexes, default=None)
    carried = set(indexes)
    before: list[Delivery] = []
    after: list[Delivery] = []
    for delivery in held:
        index = _event_index(delivery)
        if index is not None and index in carried:
            continue
        earlier = first is not None and index is not None and index < first
        (before if earlier else after).append(delivery)
    session.enqueue_many(before)
    if reply is not None:
        session.deliver(channel, reply)
    session.enqueue_many(after)


def setup(bayeux: BayeuxServer, chat: ChatEngine) -> CometdChat:
    """Register the `/service/chatV2/*` service and the notifier that delivers chat events
    to the bound CometD client."""
    service = CometdChat(bayeux, chat)
    bayeux.add_service(CHANNEL_PREFIX + "**", service.handle)
    bayeux.on_session_added(service.session_added)
    bayeux.on_session_removed(service.session_removed)
    chat.observers.append(service)
    return service
