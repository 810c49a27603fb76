"""GMS Chat API v1 over REST: `POST /genesys/1/service/{id}/ixn/chat[/refresh|send|startTyping|
stopTyping|disconnect|customNotice]` (spec-chat-v1 §2-§3).

A v1 chat is a chat of the engine like any other (agents serve v1 and v2 customers alike),
started on a Service API session (service_api.py) and addressed by that session's id. What
only v1 needs is kept in the chat's `extra["v1"]` (`V1State`): the service session, the
`gms_user`, the delivery mode (`poll`, or `comet` over `/_genesys`), the poll cursor, the push
parameters and the background state (chat_v1_cometd.py).

Transcript events are positional string arrays, `transcriptToShow` rows:
`[type, nickname, text, seconds since start, user type(, index)]`. Positions are the engine's
event indexes: position 1 is the client's own join, which the client is never shown.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from . import errors as e
from . import model as m
from .chat_push import push_keys
from .chat_v2_rest import json_response
from .engine import CLIENT_REST, ChatEngine
from .gms_user import GENESYS_CHANNEL
from .model import ChatSession, Event
from .notification_api import UNSUPPORTED_TYPES, NotificationApi
from .service_api import (
    ROOT,
    ServiceApi,
    ServiceError,
    ServiceRecord,
    bad_request,
    is_true,
    read_params,
)
from .storage import Value
from .store import StoreUnavailable

CHAT = "ixn/chat"
CONNECTED = "CONNECTED"
TRANSCRIPT = "TRANSCRIPT"
DISCONNECTED = "DISCONNECTED"
AVAILABLE = "Chat service is available"
FINISHED = "Chat was finished"
BACKGROUND_NOTICE = "gms.client-offline"
"""Marks (in `message_type`, kept in the record, never on the wire) the notice that tells the
agent the client went to the background: the client's own transcript leaves it out."""
TAG_PREFIX = "service.chat.refresh."

ROWS: dict[str, tuple[str, str | None]] = {
    m.PARTICIPANT_JOINED: ("Notice.Joined", "has joined the session"),
    m.PARTICIPANT_LEFT: ("Notice.Left", "has left the session"),
    m.MESSAGE: ("Message.Text", None),
    m.TYPING_STARTED: ("Notice.TypingStarted", "is typing"),
    m.TYPING_STOPPED: ("Notice.TypingStopped", "stopped typing"),
    m.PUSH_URL: ("Notice.PushUrl", None),
    m.CUSTOM_NOTICE: ("Notice.Custom", None),
    m.NOTICE: ("Notice.Custom", None),
    m.IDLE_ALERT: ("Message.Text", None),
    m.IDLE_CLOSE: ("Message.Text", None),
}
"""Engine event type -> v1 event type and the text shown when the event has none. Nickname
changes and files have no v1 form and are left out (positions may have gaps)."""
USER_TYPES = {m.CLIENT: "CLIENT", m.AGENT: "AGENT", m.EXTERNAL: "EXTERNAL"}
NAME_ALIASES = {
    "first": ("firstName", "first_name", "FirstName"),
    "last": ("lastName", "last_name", "LastName"),
    "email": ("email", "EmailAddress", "emailAddress"),
}
"""Every spelling of these parameters that GMS's own examples use."""

PUSH_TYPES = {
    "ios": "ios",
    "gcm": "gcm",
    "android": "gcm",
    "fcm": "fcm",
    "httpcb": "httpcb",
    "customhttp": "customhttp",
    "comet": "comet",
}
"""`push_notification_type` -> the push provider (comet: `/_genesys` of the chat's user);
`orscb`, also documented, is refused (`UNSUPPORTED_TYPES`: there is no ORS here)."""

PROBLEMS = {
    e.EMAIL_INVALID: "the e-mail address is invalid",
    e.SUBJECT_MISSING: "subject is required",
    e.SERVICE_UNKNOWN: "the service's chat service is not configured",
}
"""What a chat engine validation code means for a v1 request."""

Json = dict[str, Any]


@dataclass
class Away:
    """The client went to the background having seen up to `position`."""

    position: int
    timer: bool = False
    """The client-timeout timer was started (by the first agent event since)."""
    pushed: bool = False
    """The first push went out: every later agent event is pushed at once."""


@dataclass
class V1State:
    service_id: str
    service_name: str
    gms_user: str | None = None
    comet: bool = False
    cursor: int = 1
    """Poll mode: the last position the client was given."""
    time_zone_offset: str = "0"
    push: dict[str, str] | None = None
    away: Away | None = None
    subscription_id: str | None = None
    """`subscriptionID`: the Notification API subscription that gets the background pushes
    when there is no `push_notification_deviceid`."""
    lost_at: int | None = None
    """Epoch ms when a CometD session of the user expired (a network loss, not the
    background): where a return without `ext.transcriptPosition` is estimated to resume."""

    def to_record(self) -> Json:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Json) -> V1State:
        values = dict(record)
        away = values.pop("away", None)
        return cls(**values, away=Away(**away) if away else None)


def v1_state(session: ChatSession) -> V1State | None:
    record = session.extra.get("v1")
    return V1State.from_record(record) if isinstance(record, dict) else None


def save_state(session: ChatSession, state: V1State) -> None:
    session.extra["v1"] = state.to_record()


# -- transcript rows and chat interactions ------------------------------------------------------


def row(session: ChatSession, event: Event, with_index: bool) -> list[str] | None:
    """The event as a `transcriptToShow` row, or None when the client is not shown it."""
    shape = ROWS.get(event.type)
    if shape is None or not event.visible or event.message_type == BACKGROUND_NOTICE:
        return None
    if event.type == m.PARTICIPANT_JOINED and event.party.type == m.CLIENT:
        return None  # position 1: the client's own join
    kind, default = shape
    text = event.text if event.text is not None else default or ""
    seconds = max(0, (event.utc_time - session.created) // 1000)
    cells = [kind, event.party.nickname, text, str(seconds), USER_TYPES[event.party.type]]
    if with_index:
        cells.append(str(event.index))
    return cells


def rows(session: ChatSession, events: list[Event], with_index: bool) -> list[list[str]]:
    return [r for event in events if (r := row(session, event, with_index)) is not None]


def started_at(session: ChatSession) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(session.created / 1000))


def interaction(session: ChatSession, position: int, state: str | None = None) -> Json:
    """The base fields every chat interaction carries."""
    state = state or (DISCONNECTED if session.ended else TRANSCRIPT)
    return {
        "chatIxnState": state,
        "chatSessionId": session.chat_id,
        "transcriptPosition": str(position),
        "chatServiceMessage": FINISHED if state == DISCONNECTED else AVAILABLE,
    }


def transcript_interaction(
    session: ChatSession, position: int, shown: list[list[str]] | None
) -> Json:
    """An interaction with transcript fields (`transcriptToShow` only when there are rows)."""
    reply = interaction(session, position)
    reply["startedAt"] = started_at(session)
    if shown:
        reply["transcriptToShow"] = shown
    return reply


def comet_notification(service_id: str, message: Json, tag: str | None = None) -> Json:
    """The `data` of a `/_genesys` message: `{id, message, tag}`."""
    return {"id": uuid.uuid1().hex, "message": message, "tag": tag or TAG_PREFIX + service_id}


def verbose_fields(request: web.Request, session: ChatSession, state: V1State) -> Json:
    base = f"{ROOT}/{state.service_id}/{CHAT}"
    return {
        "userId": session.user_id,
        "secureKey": session.secure_key,
        "checkChatServiceLoadBalancerPath": "null",
        "chatServerLoadBalancerAlias": session.alias,
        "chatServerHost": request.url.host or "",
        "chatWebApiPort": str(request.url.port or ""),
        "isTLSrequired": "true" if request.secure else "false",
        "clientTimeZoneOffset": state.time_zone_offset,
        "_chatIxnAPI_SEND_URL": base + "/send",
        "_chatIxnAPI_REFRESH_URL": base + "/refresh",
        "_chatIxnAPI_START_TYPING_URL": base + "/startTyping",
        "_chatIxnAPI_STOP_TYPING_URL": base + "/stopTyping",
        "_chatIxnAPI_DISCONNECT_URL": base + "/disconnect",
        "_chatIxnAPI_REFRESH_FROM_START_URL": base + "/refresh?transcriptPosition=1",
        "_chatIxnAPI_SEND_CUSTOM_URL": base + "/customNotice",
    }


# -- one request -------------------------------------------------------------------------------


@dataclass
class Call:
    request: web.Request
    params: dict[str, Value]

    def text(self, *names: str) -> str | None:
        """The first of these parameters that is given and not blank."""
        for name in names:
            value = self.params.get(name)
            if isinstance(value, str) and value.strip():
                return value
        return None

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise bad_request(f"{name} is required")
        return value

    @property
    def verbose(self) -> bool:
        return is_true(self.params.get("_verbose"))

    def position(self) -> int | None:
        """`transcriptPosition` (a number or its text): show events from it on."""
        raw = self.text("transcriptPosition")
        if raw is None:
            return None
        if not raw.strip().isdigit():
            raise bad_request("transcriptPosition must be a whole number")
        return max(int(raw.strip()[:18]), 1)


class ChatV1Api:
    def __init__(
        self, chat: ChatEngine, services: ServiceApi, notifications: NotificationApi
    ) -> None:
        self.chat = chat
        self.services = services
        self.notifications = notifications
        self.with_index = chat.config.enable_fast_chat_transcript_refresh
        self.operations = {
            "refresh": self.refresh,
            "send": self.send,
            "startTyping": self.start_typing,
            "stopTyping": self.stop_typing,
            "customNotice": self.custom_notice,
            "disconnect": self.disconnect,
        }

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{ROOT}/{{id}}/{CHAT}", self.start),
            web.post(f"{ROOT}/{{id}}/{CHAT}/{{operation}}", self.operation),
        ]

    # -- starting a chat -----------------------------------------------------------------
    async def start(self, request: web.Request) -> web.Response:
        """`ixn/chat`: start the service session's chat (one per session)."""
        try:
            return json_response(await self._start(request))
        except (ServiceError, e.ChatError) as error:
            return failure(error)

    async def _start(self, request: web.Request) -> Json:
        sessions = self.services.sessions
        record = await sessions.get(request.match_info["id"])
        if record.chat_id:
            raise _already_started(record.id)
        call = Call(request, await read_params(request))
        gms_user = request.headers.get("gms_user") or None
        comet = (call.text("notify_by") or "").strip().lower() == "comet"
        if comet and not gms_user:
            raise bad_request("notify_by=comet needs the gms_user header")
        params = {k: v for k, v in call.params.items() if isinstance(v, str)}
        state = V1State(
            service_id=record.id,
            service_name=record.name,
            gms_user=gms_user,
            comet=comet,
            time_zone_offset=call.text("clientTimeZoneOffset") or "0",
            push=push_keys(params),
            subscription_id=await self._subscription(call.text("subscriptionID")),
        )
        _check_push_type(call.text("push_notification_type"))
        if not await sessions.claim_chat(record):
            raise _already_started(record.id)
        try:
            session = await self._request_chat(call, record, state)
        except BaseException:
            await sessions.release_chat(record)
            raise
        await sessions.attach_chat(record, session.chat_id)
        if comet and gms_user:
            await sessions.set_current_chat(gms_user, session.chat_id)
        reply = interaction(session, 1, CONNECTED)
        if call.verbose:
            reply |= verbose_fields(request, session, state)
            if comet:
                reply["comet_channel"] = GENESYS_CHANNEL
        return reply

    async def _request_chat(self, call: Call, record: ServiceRecord, state: V1State) -> ChatSession:
        """The engine chat of a v1 request; `message` replaces the client's join notice."""
        first, last = call.text(*NAME_ALIASES["first"]), call.text(*NAME_ALIASES["last"])
        data = await self.services.sessions.data(record)
        user_data = {k: v for k, v in data.items() if isinstance(v, str)}
        for key, value in (("fldnFirstName", first), ("fldnLastName", last)):
            if value:
                user_data[key] = value
        email = call.text(*NAME_ALIASES["email"])
        nickname = call.text("userDisplayName") or _full_name(first, last) or call.request.remote
        outcome = await self.chat.request_chat(
            self.services.chat_service(record.name),
            nickname=nickname,
            first_name=None,
            last_name=None,
            subject=call.text("subject"),
            email=email,
            user_data=user_data | ({"fldnEmailAddress": email} if email else {}),
            extra={"v1": state.to_record()},
            join_text=call.text("message"),
        )
        return outcome.session

    async def _subscription(self, subscription_id: str | None) -> str | None:
        """`subscriptionID`, checked: it must name a live Notification API subscription."""
        if subscription_id is None:
            return None
        try:
            found = await self.notifications.store.get(subscription_id)
        except StoreUnavailable as exc:
            raise ServiceError(503, f"subscriptions unavailable: {exc}") from exc
        if found is None:
            raise bad_request(f"subscriptionID {subscription_id}: no such subscription")
        return subscription_id

    # -- operations on a chat ------------------------------------------------------------
    async def operation(self, request: web.Request) -> web.Response:
        handler = self.operations.get(request.match_info["operation"])
        if handler is None:
            return failure(ServiceError(404, "unknown chat operation"))
        try:
            record = await self.services.sessions.get(request.match_info["id"])
            if not record.chat_id:
                raise ServiceError(404, f"no chat was started on service {record.id}")
            call = Call(request, await read_params(request))
            return json_response(await handler(call, record.chat_id))
        except (ServiceError, e.ChatError) as error:
            return failure(error)

    async def refresh(self, call: Call, chat_id: str) -> Json:
        """The transcript since the last refresh (or from `transcriptPosition`); a `message`
        is sent first. Once the chat ended and its end was shown: 404."""
        position = call.position()
        message = call.text("message")
        if message is not None:
            session = (await self.chat.client_event(chat_id, m.MESSAGE, message)).session
        else:
            session = await self.chat.load(chat_id, allow_ended=True)
        return await self._transcript_reply(call, session, position)

    async def send(self, call: Call, chat_id: str) -> Json:
        message = call.required("message")
        position = call.position()
        outcome = await self.chat.client_event(chat_id, m.MESSAGE, message)
        return await self._transcript_reply(call, outcome.session, position)

    async def start_typing(self, call: Call, chat_id: str) -> Json:
        return await self._event(call, chat_id, m.TYPING_STARTED, call.text("message"))

    async def stop_typing(self, call: Call, chat_id: str) -> Json:
        return await self._event(call, chat_id, m.TYPING_STOPPED, call.text("message"))

    async def custom_notice(self, call: Call, chat_id: str) -> Json:
        return await self._event(call, chat_id, m.CUSTOM_NOTICE, call.required("message"))

    async def disconnect(self, call: Call, chat_id: str) -> Json:
        """The client leaves (`message` in place of the standard notice); its own
        `Notice.Left` is not counted in the position. A chat that already ended (the agent
        closed it, it timed out, or the client left before) answers the same way: the
        documented reply, `DISCONNECTED` / `Chat was finished`; only a chat that is no longer
        kept at all is 404."""
        try:
            outcome = await self.chat.client_disconnect(chat_id, text=call.text("message"))
        except e.ChatError as error:
            if e.SESSION_NOT_FOUND not in error.codes:
                raise
            session = await self._ended(chat_id)
        else:
            session = outcome.session
        position = session.last_index - 1 if session.client_left else session.last_index
        reply = interaction(session, position, DISCONNECTED)
        if call.verbose:
            reply |= verbose_fields(call.request, session, _state(session))
        return reply

    async def _ended(self, chat_id: str) -> ChatSession:
        """The chat a disconnect found ended; its end counts as shown (refresh is now 404)."""
        session = await self.chat.get(chat_id)
        if session is None or not session.ended:
            raise ServiceError(404, "the chat session has ended")
        if not session.client_left:  # (a chat the client left is closed to it already)
            await self._move_cursor(chat_id, session.last_index)
        return session

    async def _event(self, call: Call, chat_id: str, kind: str, text: str | None) -> Json:
        outcome = await self.chat.client_event(chat_id, kind, text)
        return await self._transcript_reply(call, outcome.session, None)

    async def _transcript_reply(
        self, call: Call, session: ChatSession, position: int | None
    ) -> Json:
        """Poll mode: the events from `position` (else after the cursor) up to `session`'s
        last; comet mode: the interaction without them (they travel on `/_genesys`), unless
        the fast transcript refresh is on."""
        state = _state(session)
        plain_comet = state.comet and not self.with_index
        if session.ended and (state.comet or state.cursor >= session.last_index):
            raise ServiceError(404, "the chat session has ended")
        if plain_comet and not call.verbose:
            return {"_id": state.service_id, "comet_channel": GENESYS_CHANNEL}
        shown: list[list[str]] = []
        if not plain_comet:
            start = position if position is not None else state.cursor + 1
            events = await self.chat.transcript(session, start)
            events = [ev for ev in events if ev.index <= session.last_index]
            shown = rows(session, events, self.with_index)
            await self._move_cursor(session.chat_id, session.last_index)
        reply = transcript_interaction(session, session.last_index, shown)
        if call.verbose:
            reply |= verbose_fields(call.request, session, state)
        if state.comet:
            reply["comet_channel"] = GENESYS_CHANNEL
        return reply

    async def _move_cursor(self, chat_id: str, position: int) -> None:
        def change(session: ChatSession) -> list[Event]:
            state = _state(session)
            if position > state.cursor:
                state.cursor = position
                save_state(session, state)
            return []

        await self.chat.change(chat_id, change, CLIENT_REST, allow_ended=True)


def _state(session: ChatSession) -> V1State:
    state = v1_state(session)
    if state is None:  # a chat of another API: not reachable by a service id
        raise ServiceError(404, "not a chat v1 session")
    return state


def _already_started(service_id: str) -> ServiceError:
    return ServiceError(409, f"a chat was already started on service {service_id}")


def _check_push_type(kind: str | None) -> None:
    """A push type this server cannot deliver is refused when the chat starts, not found
    out when the first push is due."""
    if kind is None:
        return
    name = kind.strip().lower()
    if name in UNSUPPORTED_TYPES:
        raise bad_request(f"push_notification_type: {UNSUPPORTED_TYPES[name]}")
    if name not in PUSH_TYPES:
        known = ", ".join(PUSH_TYPES)
        raise bad_request(f"push_notification_type {kind!r} is not one of {known}")


def _full_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def failure(error: ServiceError | e.ChatError) -> web.Response:
    """A chat error as a v1 reply: validation 400, an ended or unknown chat 404, a store or
    node that cannot answer now 503."""
    if isinstance(error, ServiceError):
        return error.response()
    if error.http != 200:
        reasons = [PROBLEMS.get(code, f"GMS error {code}") for code in error.codes]
        return ServiceError(error.http, "; ".join(reasons)).response()
    if error.status == 1:
        return ServiceError(503, "the chat service is not available; retry").response()
    return ServiceError(404, "the chat session has ended").response()


def setup(
    app: web.Application, chat: ChatEngine, services: ServiceApi, notifications: NotificationApi
) -> ChatV1Api:
    api = ChatV1Api(chat, services, notifications)
    app.add_routes(api.routes())
    return api
