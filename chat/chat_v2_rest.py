"""GMS Chat API v2 over REST: `/genesys/2/chat/{serviceName}[/{chatId}/...]`.

Every endpoint is a `POST` of form fields (urlencoded or multipart; query-string parameters
are merged in, the body wins) answered with the chat v2 envelope. Each endpoint below is a
small function of a `Call`; `RestApi.serve` is the one path every request takes, in the
order the spec fixes (spec-chat-v2 §1.7):

    405 (not POST) → 404/306 (service) → 401 (Basic auth) → 415 (content type)
    → 400 with every missing or malformed parameter at once → 249 (session) → the operation

File management (`…/file…`, spec §2.12-2.15) is served by chat_files.py through the same
path: `RestApi.route` takes a `FileReceiver` that streams multipart file parts as they arrive,
and a `Failure` renderer for endpoints whose errors are not JSON (downloads).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import BodyPartReader, hdrs, web

from bayeux.transports.http import cross_origin_headers

from . import errors as e
from . import model as m
from .auth import BasicAuth
from .config import ServiceConfig
from .engine import ChatEngine, request_problems
from .model import ChatSession

log = logging.getLogger("gms.chat.rest")

ROOT = "/genesys/2/chat"
JSON_TYPE = "application/json;charset=UTF-8"
MULTIPART = "multipart/form-data"
FORM_TYPES = ("application/x-www-form-urlencoded", MULTIPART)
USER_DATA = re.compile(r"userData\[(.*)\]", re.DOTALL)
"""`userData[<key>]`: the key runs from the first `[` to the last `]` (spec §1.2)."""
POSITION = re.compile(r"[0-9]+")
BEYOND_ANY_INDEX = 2**63 - 1
"""What a longer run of digits means: past the end of any transcript (and safe for stores)."""
NO_CACHE = {"Cache-Control": "no-cache, no-store", "Pragma": "no-cache"}
ANY_ORIGIN = "*"
REALM = 'Basic realm="GMS"'
FIELDS_MAX = 1 << 20
"""Bytes of text fields a streamed multipart body may carry (besides its file parts)."""

Reply = dict[str, Any]
Handler = Callable[["Call"], Awaitable[Reply | web.StreamResponse]]
"""An endpoint: a JSON reply, or a response of its own (a download)."""
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""Everything after CORS and the method check."""
Failure = Callable[[web.Request, Exception], web.Response]
"""How a failed request is answered; called inside the `except`, so it may log the traceback."""


class Attachment(Protocol):
    """What a `FileReceiver` made of a file part."""

    async def close(self) -> None:
        """Release whatever the request did not keep (called once the request is answered)."""


FileReceiver = Callable[[web.Request, "Form", BodyPartReader], Awaitable[Attachment]]
"""Takes one multipart file part as it arrives; the form holds the fields read before it. A
receiver that leaves the part unread (too large to be worth reading) ends the body there."""


@dataclass
class Form:
    """A request's parameters: query string and body merged, the body winning."""

    params: dict[str, str] = field(default_factory=dict)
    user_data: dict[str, str] = field(default_factory=dict)
    """The `userData[<key>]` parameters, by key (the last value of a repeated key wins)."""
    files: dict[str, Attachment] = field(default_factory=dict)
    """Multipart file parts, as the endpoint's `FileReceiver` took them (only endpoints that
    have one receive files; the others ignore file parts)."""

    def add(self, name: str, value: str) -> None:
        match = USER_DATA.fullmatch(name)
        if match:
            self.user_data[match.group(1)] = value
        else:
            self.params[name] = value

    async def attach(self, name: str, attachment: Attachment) -> None:
        """Keep a file part (a repeated name: the last one wins, the other is released)."""
        previous = self.files.pop(name, None)
        self.files[name] = attachment
        if previous is not None:
            await previous.close()

    async def close(self) -> None:
        for attachment in self.files.values():
            await attachment.close()


class Fields:
    """A request's parameters on their way through validation.

    Handlers read parameters through `require`, `optional`, `given` and `position`; each
    problem found is kept rather than raised, so that `validate()` can report every missing
    or malformed parameter in one 400 before the session is looked up.
    """

    def __init__(self, form: Form) -> None:
        self.form = form
        self.problems: list[int] = []

    @property
    def user_data(self) -> dict[str, str]:
        return self.form.user_data

    def given(self, name: str) -> str | None:
        """The raw value, empty strings included (refresh's `message` counts even empty)."""
        return self.form.params.get(name)

    def optional(self, name: str) -> str | None:
        """The value, or None when absent or empty."""
        return self.form.params.get(name) or None

    def require(self, name: str, code: int) -> str:
        """The value; absent or empty is the parameter's missing-code."""
        value = self.form.params.get(name, "")
        if not value:
            self.problems.append(code)
        return value

    def position(self, missing: int | None = None) -> int | None:
        """`transcriptPosition` as a non-negative integer (308 otherwise); absent is None,
        or the `missing` code when the parameter is required."""
        raw = self.form.params.get("transcriptPosition", "").strip()
        if not raw:
            if missing is not None:
                self.problems.append(missing)
            return None
        if not POSITION.fullmatch(raw):
            self.problems.append(e.TRANSCRIPT_POSITION_INVALID)
            return None
        digits = raw.lstrip("0") or "0"
        return int(digits) if len(digits) <= 18 else BEYOND_ANY_INDEX

    def validate(self) -> None:
        """Raise the 400 with every problem found so far, if any."""
        if self.problems:
            raise e.invalid(*self.problems)


class Call(Fields):
    """One request to a chat service: its parameters, and the chat they open."""

    def __init__(
        self, chat: ChatEngine, service: ServiceConfig, chat_id: str | None, form: Form
    ) -> None:
        super().__init__(form)
        self.chat = chat
        self.service = service
        self.chat_id = chat_id
        if chat_id is not None:  # every call after the create names its chat (spec §2)
            self._user_id = self.require("userId", e.USER_ID_MISSING)
            self._secure_key = self.require("secureKey", e.SECURE_KEY_MISSING)
            self.require("alias", e.ALIAS_MISSING)  # presence only: aliases move (§1.6)
            if not chat_id:
                self.problems.append(e.CHAT_ID_MISSING)

    async def session(self, allow_ended: bool = False) -> ChatSession:
        """The request's chat, once its parameters are valid (249 if the credentials do not
        open it, or it ended and `allow_ended` is false)."""
        self.validate()
        assert self.chat_id is not None, "only chat endpoints have a session"
        return await self.chat.authenticate(
            self.chat_id, self._user_id, self._secure_key, allow_ended
        )


# -- replies ---------------------------------------------------------------------------


def envelope(session: ChatSession, messages: list[Reply] | None = None) -> Reply:
    """The keys every chat reply but create and disconnect carries (spec §2.16)."""
    return {
        "messages": messages,
        "chatEnded": session.ended,
        "statusCode": 0,
        "alias": session.alias,
        "secureKey": session.secure_key,
        "userId": session.user_id,
    }


async def transcript_reply(call: Call, session: ChatSession, position: int | None) -> Reply:
    """The envelope with the visible events from `position` on (absent: all; 0: none) and
    `nextPosition` (spec §3.3).

    Events committed after `session` was read are left for the next request: returning
    them now, beyond the `nextPosition` sent back, would deliver them twice.
    """
    messages: list[Reply] = []
    if position != 0:
        events = await call.chat.transcript(session, position or 1)
        messages = [ev.to_wire() for ev in events if ev.index <= session.last_index]
    return {**envelope(session, messages), "nextPosition": session.next_position}


DISCONNECTED: Reply = {
    "messages": None,
    "chatEnded": None,
    "statusCode": 0,
    "alias": None,
    "secureKey": None,
    "userId": None,
}
"""The disconnect reply, exactly as GMS's example (spec §2.6): the credentials are dead."""


# -- endpoints -------------------------------------------------------------------------


async def request_chat(call: Call) -> Reply:
    """2.1: create a chat. Name, e-mail and subject problems are reported together."""
    nickname = call.optional("nickname")
    first_name = call.optional("firstName")
    last_name = call.optional("lastName")
    subject = call.optional("subject")
    email = call.optional("emailAddress")
    call.problems += request_problems(call.service, nickname, first_name, last_name, subject, email)
    call.validate()
    outcome = await call.chat.request_chat(
        call.service.name,
        nickname=nickname,
        first_name=first_name,
        last_name=last_name,
        subject=subject,
        email=email,
        user_data=call.user_data,
    )
    session = outcome.session
    return {
        "statusCode": 0,
        "alias": session.alias,
        "userId": session.user_id,
        "secureKey": session.secure_key,
        "messages": [ev.to_wire() for ev in outcome.events],
        "chatId": session.chat_id,
        "chatEnded": session.ended,
        "nextPosition": session.next_position,
    }


async def send(call: Call) -> Reply:
    """2.2: a client Message; with `transcriptPosition` the reply carries the transcript."""
    message = call.require("message", e.MESSAGE_MISSING)
    message_type = call.optional("messageType")
    position = call.position()
    session = await call.session()
    outcome = await call.chat.client_event(session.chat_id, m.MESSAGE, message, message_type)
    if position is None:
        return envelope(outcome.session)
    return await transcript_reply(call, outcome.session, position)


async def start_typing(call: Call) -> Reply:
    """2.3: TypingStarted, with the optional preview text."""
    return await client_event(call, m.TYPING_STARTED, call.optional("message"))


async def stop_typing(call: Call) -> Reply:
    """2.4: TypingStopped, with the optional text."""
    return await client_event(call, m.TYPING_STOPPED, call.optional("message"))


async def push_url(call: Call) -> Reply:
    """2.7: PushUrl; the URL is not validated (GMS's own example has no scheme)."""
    return await client_event(call, m.PUSH_URL, call.require("pushUrl", e.PUSH_URL_MISSING))


async def custom_notice(call: Call) -> Reply:
    """2.9: CustomNotice, for custom clients and desktops."""
    return await client_event(call, m.CUSTOM_NOTICE, call.optional("message"))


async def client_event(call: Call, kind: str, text: str | None) -> Reply:
    """The event-only endpoints: REST replies do not return the new event (spec §2.16)."""
    session = await call.session()
    outcome = await call.chat.client_event(session.chat_id, kind, text)
    return envelope(outcome.session)


async def refresh(call: Call) -> Reply:
    """2.5: the transcript from `transcriptPosition`; also the typing preview, and the
    final events of a chat that ended (but not one the client disconnected)."""
    preview = call.given("message")
    position = call.position()
    session = await call.session(allow_ended=True)
    if preview is not None and call.service.typing_preview and not session.ended:
        try:
            outcome = await call.chat.client_event(session.chat_id, m.TYPING_STARTED, preview)
            session = outcome.session
        except e.ChatError as error:
            if e.SESSION_NOT_FOUND not in error.codes:
                raise
            session = await call.session(allow_ended=True)  # it ended meanwhile
    reply = await transcript_reply(call, session, position)
    if call.service.tenant:
        reply["tenantName"] = call.service.tenant
    return reply


async def disconnect(call: Call) -> Reply:
    """2.6: the client leaves; the chat ends and its credentials stop working."""
    session = await call.session()
    await call.chat.client_disconnect(session.chat_id)
    return dict(DISCONNECTED)


async def update_nickname(call: Call) -> Reply:
    """2.8: NicknameUpdated; later client events carry the new nickname."""
    nickname = call.require("nickname", e.NICKNAME_MISSING)
    session = await call.session()
    outcome = await call.chat.update_nickname(session.chat_id, nickname)
    return envelope(outcome.session)


async def update_data(call: Call) -> Reply:
    """2.10: merge `userData[...]` into the attached data (at least one key: 105)."""
    if not call.user_data:
        call.problems.append(e.USER_DATA_MISSING)
    session = await call.session()
    outcome = await call.chat.update_data(session.chat_id, call.user_data)
    return envelope(outcome.session)


async def read_receipt(call: Call) -> Reply:
    """2.11: move the client's read mark; `transcriptPosition` is the index read."""
    position = call.position(missing=e.TRANSCRIPT_POSITION_MISSING)
    session = await call.session()
    assert position is not None  # session() raised otherwise
    outcome = await call.chat.read_receipt(session.chat_id, position)
    return envelope(outcome.session)


OPERATIONS: dict[str, Handler] = {
    "send": send,
    "startTyping": start_typing,
    "stopTyping": stop_typing,
    "refresh": refresh,
    "disconnect": disconnect,
    "pushUrl": push_url,
    "updateNickname": update_nickname,
    "customNotice": custom_notice,
    "updateData": update_data,
    "readReceipt": read_receipt,
}
"""The endpoints under `/genesys/2/chat/{serviceName}/{chatId}/`."""


# -- the common path -------------------------------------------------------------------


class Refused(Exception):
    """A request answered before it reaches its endpoint: 401, 415 or a malformed body.
    These have no GMS error code, so the body is a plain `{"message": ...}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class RestApi:
    """The Chat v2 REST surface of one application: routing, CORS and the common path."""

    def __init__(self, chat: ChatEngine, allowed_origins: Collection[str]) -> None:
        self.chat = chat
        self.allowed_origins = tuple(allowed_origins)
        self._auth: dict[str, BasicAuth] = {}

    def route(
        self,
        handler: Handler,
        receive_file: FileReceiver | None = None,
        failure: Failure | None = None,
    ) -> Answer:
        """An endpoint of a chat service: `answer` behind `serve`."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            return await self.serve(
                request, lambda req: self.answer(req, handler, receive_file, failure)
            )

        return endpoint

    async def serve(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        """CORS and method, then the request itself; every reply gets the CORS headers."""
        cors = self.cors_headers(request)
        if cors is None:
            return json_response({"message": "origin not allowed"}, 403)
        if request.method == hdrs.METH_OPTIONS:
            return web.Response(status=204, headers=cors)
        response: web.StreamResponse
        if request.method != hdrs.METH_POST:
            response = json_response({"message": f"{request.method} not allowed; use POST"}, 405)
            response.headers[hdrs.ALLOW] = "POST, OPTIONS"
        else:
            response = await answer(request)
        response.headers.update(cors)
        return response

    async def answer(
        self,
        request: web.Request,
        handler: Handler,
        receive_file: FileReceiver | None = None,
        failure: Failure | None = None,
    ) -> web.StreamResponse:
        """Service, Basic auth, the form, then the endpoint (failures: JSON by default)."""

        async def work() -> web.StreamResponse:
            service = self.chat.service(request.match_info["serviceName"])
            if service.basic_auth and await self.auth(service).user(request) is None:
                raise Refused(401, "Unauthorized", {hdrs.WWW_AUTHENTICATE: REALM})
            form = await read_form(request, receive_file)
            try:
                call = Call(self.chat, service, request.match_info.get("chatId"), form)
                return respond(await handler(call))
            finally:
                await form.close()

        return await guarded(request, work, failure or json_failure)

    def auth(self, service: ServiceConfig) -> BasicAuth:
        """One checker per protected service (each remembers its own successes)."""
        checker = self._auth.get(service.name)
        if checker is None:
            checker = self._auth[service.name] = BasicAuth(service.credentials)
        return checker

    def cors_headers(self, request: web.Request) -> dict[str, str] | None:
        """Headers that let an allowed cross-site widget read the reply (spec §1.3); None if
        the origin is not allowed."""
        return cross_origin_headers(self.allowed_origins, request, "POST, OPTIONS")


async def read_form(request: web.Request, receive_file: FileReceiver | None = None) -> Form:
    """The query string, then the body's fields over it.

    An empty body, whatever its declared type, simply has no parameters and fails
    validation like any request missing them; a body of another type is 415. With a
    `receive_file`, a multipart body is streamed and its file parts handed to it; without
    one, file parts are ignored.
    """
    form = Form()
    for name, text in request.query.items():
        form.add(name, text)
    if not request.body_exists:
        return form
    if request.content_type not in FORM_TYPES:
        raise Refused(415, f"unsupported content type; use one of {', '.join(FORM_TYPES)}")
    try:
        if receive_file is not None and request.content_type == MULTIPART:
            await _stream_multipart(request, form, receive_file)
        else:
            await _read_body(request, form)
    except ValueError as error:  # a malformed multipart body
        await form.close()
        raise Refused(400, f"malformed form body: {error}") from error
    except BaseException:
        await form.close()
        raise
    return form


async def _read_body(request: web.Request, form: Form) -> None:
    for name, value in (await request.post()).items():
        if isinstance(value, str):
            form.add(name, value)
        elif not isinstance(value, web.FileField):  # a field sent with a non-text type
            form.add(name, bytes(value).decode(errors="replace"))


async def _stream_multipart(request: web.Request, form: Form, receive_file: FileReceiver) -> None:
    """Text fields are read whole (at most `FIELDS_MAX` bytes in all); file parts go to
    `receive_file` as they arrive."""
    reader = await request.multipart()
    room = FIELDS_MAX
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise ValueError("nested or unnamed multipart part")
        if part.filename:
            await form.attach(part.name, await receive_file(request, form, part))
            if not part.at_eof():
                return  # the receiver has what it needs; the rest of the body is not read
        else:
            room -= await _read_field(form, part, room)


async def _read_field(form: Form, part: BodyPartReader, room: int) -> int:
    """Add one text field; the bytes it took."""
    raw = bytearray()
    while chunk := await part.read_chunk():
        raw.extend(chunk)
        if len(raw) > room:
            raise Refused(413, "form fields too large")
    value = bytearray()
    async for decoded in part.decode_iter(raw):
        value.extend(decoded)
    assert part.name is not None
    form.add(part.name, value.decode(part.get_charset(default="utf-8"), errors="replace"))
    return len(raw)


async def guarded(
    request: web.Request, work: Callable[[], Awaitable[web.StreamResponse]], failure: Failure
) -> web.StreamResponse:
    """`work`'s response, or `failure`'s for what it raised (aiohttp's own HTTP errors, e.g.
    413 for an oversized body, pass through)."""
    try:
        return await work()
    except web.HTTPException:
        raise
    except Exception as error:
        return failure(request, error)


def respond(result: Reply | web.StreamResponse) -> web.StreamResponse:
    return result if isinstance(result, web.StreamResponse) else json_response(result)


def json_failure(request: web.Request, error: Exception) -> web.Response:
    """The chat v2 error replies: a refusal's status with `{"message"}`; a chat error's
    envelope; anything else `statusCode` 2 with code 240 and a logged referenceId."""
    if isinstance(error, Refused):
        response = json_response({"message": error.message}, error.status)
        response.headers.update(error.headers)
        return response
    if isinstance(error, e.ChatError):
        return error_response(error)
    reference = reference_id()
    log.exception("chat v2 REST %s failed, referenceId %s", request.path, reference)
    return json_response(
        {"statusCode": 2, "errors": [{"code": e.INTERNAL_ERROR, "advice": reference}]}
    )


def reference_id() -> str:
    """The id a failure is logged under, for the client to quote."""
    return secrets.token_hex(8).upper()


def error_response(error: e.ChatError) -> web.Response:
    """400/404 carry only `errors`; a refused or failed operation is HTTP 200 with its
    `statusCode`. Transient failures are a bare `{"statusCode":1}` (the other fields are
    not valid, spec §1.7); their detail goes to the log."""
    errors = [code.to_wire() for code in error.errors]
    if error.http != 200:
        return json_response({"errors": errors}, error.http)
    if error.status == 1:
        log.warning("chat v2 REST transient failure: %s", [c.advice for c in error.errors])
        return json_response({"statusCode": 1})
    body: Reply = {"statusCode": error.status}
    if error.chat_ended is not None:
        body["chatEnded"] = error.chat_ended
    body["errors"] = errors
    return json_response(body)


def json_response(body: Reply, status: int = 200) -> web.Response:
    headers = {hdrs.CONTENT_TYPE: JSON_TYPE, **NO_CACHE}
    return web.Response(status=status, body=orjson.dumps(body), headers=headers)


def setup(
    app: web.Application, chat: ChatEngine, allowed_origins: Collection[str] = (ANY_ORIGIN,)
) -> RestApi:
    """Add the Chat v2 REST routes to the application.

    Each route takes every method so that the API itself answers OPTIONS (CORS preflight)
    and 405. The chat id segment may be empty, to be reported as 154 rather than 404.
    """
    api = RestApi(chat, allowed_origins)
    app.router.add_route("*", f"{ROOT}/{{serviceName}}", api.route(request_chat))
    for name, handler in OPERATIONS.items():
        path = f"{ROOT}/{{serviceName}}/{{chatId:[^/]*}}/{name}"
        app.router.add_route("*", path, api.route(handler))
    return api
