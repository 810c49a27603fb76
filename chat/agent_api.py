"""The agent API, in Genesys Web Services (GWS) style: REST under `/api/v2/me` and CometD at
`/api/v2/notifications`.

* `GET /api/v2/me` with Basic authentication answers the agent and sets a session cookie
  (`JSESSIONID`); later requests authenticate with the cookie (or Basic again). The login
  behind the cookie (agent_logins.py) lasts `[agent-api] session_timeout_s` (8 hours) after
  its last use; with `--redis` it is in Redis, so it works on every node.
* CSRF (seed 004, "Cross Site Request Forgery Protection"): authenticated GET responses
  carry `X-CSRF-HEADER: X-CSRF-TOKEN` and `X-CSRF-TOKEN: <token>`, one token per HTTP
  session; every POST/PUT/DELETE authenticated by the session cookie, Bayeux long-polls at
  `/api/v2/notifications` included, must send it in `X-CSRF-TOKEN` or gets 403. Requests
  authenticated by their own `Authorization: Basic` header (scripts, no cookie) need none.
  `[agent-api] csrf = false` turns it off.
* Requests are `POST`s with an `operationName`, answered `{"statusCode":0}`; results and
  events arrive over CometD on the agent's own channels: `/v2/me/chats`
  (`ChatStateChangeMessage`) and `/v2/me/channels` (`ChannelStateChangeMessage`). A chat
  operation must be one of the chat's `capabilities` in its current state.
* `GET /api/v2/agents` lists every agent with its state (transfer targets).
* Errors answer `{"statusCode":N,"statusMessage":"..."}` with a 4xx status (GWS codes: 1
  missing parameter, 2 not valid in the current state, 3 forbidden, 6 not found, 10 invalid
  input, 20 not authenticated).

CometD runs on its own Bayeux server mounted in a sub-application at `/api/v2`: its sessions
are agents (bound as Bayeux user `agent:<name>`), not customers, and its policy differs
from the customer server's (cookie or Basic handshake, `/v2/me/*` only, no publishing). With
the Redis engine it gets a Redis engine of its own (prefix `<prefix>:agents`), so an agent's
notifications reach it on whichever node it is connected.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bayeux import BayeuxOptions, BayeuxServer, Engine, MemoryEngine, SecurityPolicy, mount
from bayeux.engine import EngineUnavailable
from bayeux.protocol import Message
from bayeux.redis_engine import RedisEngine
from bayeux.server import RequestContext
from bayeux.session import ServerSession

from . import model as m
from .agent_logins import AgentLogin, LoginStore, MemoryLoginStore, RedisLoginStore
from .agents import (
    CAPABILITIES,
    FORBIDDEN,
    INVALID_INPUT,
    INVALID_STATE,
    MISSING_PARAMETER,
    NOT_AUTHENTICATED,
    NOT_READY,
    READY,
    UNAVAILABLE,
    RoutingSettings,
    agent_credentials,
    agent_resource,
    channel_resource,
    chat_resource,
    seconds_option,
)
from .auth import BasicAuth, decode_basic
from .config import ChatConfig, truthy
from .engine import Cause, ChatEngine
from .errors import ChatError
from .redis_store import RedisChatStore
from .routing import Route, Router, RoutingError, chat_not_found
from .routing_redis import RedisRoutingStore
from .routing_store import MemoryRoutingStore, RoutingStore
from .store import ChatStore, StoreUnavailable

PREFIX = "/api/v2"
NOTIFICATIONS = "/notifications"
SESSION_COOKIE = "JSESSIONID"
CSRF_HEADER = "X-CSRF-TOKEN"
API_SECTION = "agent-api"
ME_CHANNELS = "/v2/me/"
MAX_URL_LENGTH = 2048
DEFAULT_SESSION_TIMEOUT_S = 8 * 3600.0
"""A working shift: REST calls and long-polls refresh a login, a websocket alone does not."""
ROUTER = web.AppKey("agent_router", Router)
AGENT_BAYEUX = web.AppKey("agent_bayeux", BayeuxServer)
"""The agent side's own Bayeux server (the Node API drains it with the customers' one)."""
LOGIN: web.RequestKey[AgentLogin | None] = web.RequestKey("agent_login")
"""The login a request's session cookie names (or the one `GET /me` just opened)."""
_CHANGES = ("POST", "PUT", "DELETE")


def user_key(name: str) -> str:
    """The Bayeux user an agent's CometD sessions are bound to."""
    return f"agent:{name}"


@dataclass(frozen=True)
class ApiSettings:
    """`[agent-api]`: `csrf` (true by default), `session_timeout_s` (how long a login lasts
    after its last use)."""

    csrf: bool = True
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, str]]) -> ApiSettings:
        values = sections.get(API_SECTION, {})
        unknown = set(values) - {"csrf", "session_timeout_s"}
        if unknown:
            raise ValueError(f"[{API_SECTION}]: unknown option {sorted(unknown)[0]!r}")
        timeout = seconds_option(
            API_SECTION, values, "session_timeout_s", DEFAULT_SESSION_TIMEOUT_S
        )
        return cls(truthy(values.get("csrf", "true")), timeout)


class AgentSessions:
    """Who is logged in: logins (session cookies) and Basic credentials."""

    def __init__(self, credentials: dict[str, str], logins: LoginStore) -> None:
        self.auth = BasicAuth(credentials, realm="GWS")
        self.logins = logins

    async def from_basic(self, header: str) -> str | None:
        decoded = decode_basic(header)
        if decoded is None:
            return None
        user, password = decoded
        return user if await self.auth.verify(user, password) else None


class AgentSecurityPolicy(SecurityPolicy):
    """Handshakes need the agent's session cookie (or Basic); agents may subscribe to
    `/v2/me/*` (their own messages only: everything is delivered per user) and publish
    nothing."""

    def __init__(self, server: BayeuxServer, sessions: AgentSessions) -> None:
        self.server = server
        self.sessions = sessions

    async def can_handshake(
        self, session: ServerSession, message: Message, context: RequestContext
    ) -> bool:
        try:
            login = await self.sessions.logins.find(context.cookies.get(SESSION_COOKIE))
        except StoreUnavailable as exc:
            raise EngineUnavailable(str(exc)) from exc
        name = login.name if login is not None else None
        if name is None:
            name = await self.sessions.from_basic(context.headers.get("Authorization", ""))
        if name is None:
            return False
        session.attributes["agent"] = name
        await self.server.bind_user(session, user_key(name))
        return True

    async def can_subscribe(self, session: ServerSession, channel: str, message: Message) -> bool:
        return "agent" in session.attributes and channel.startswith(ME_CHANNELS)

    async def can_publish(self, session: ServerSession, channel: str, message: Message) -> bool:
        return False


def setup(
    app: web.Application,
    chat: ChatEngine,
    config: ChatConfig,
    cli_agents: dict[str, str] | None = None,
    options: BayeuxOptions | None = None,
    engine: Engine | None = None,
) -> Router:
    """Add the agent API and its router to `app` (agents from `[agents]` and `cli_agents`,
    name -> password hash). `engine` is the customer Bayeux server's: with Redis, the agent
    side shares routing and notifications across nodes too."""
    credentials = agent_credentials(config.sections, cli_agents)
    settings = ApiSettings.from_sections(config.sections)
    logins = _login_store(chat.store, settings.session_timeout_s)
    agent_engine = _agent_engine(engine)
    router = Router(
        chat,
        credentials,
        RoutingSettings.from_sections(config.sections),
        _routing_store(chat.store),
        agent_engine.node_id,
    )
    if credentials:
        # Without agents there is nothing to route to (chats are then for other agent-side
        # integrations to pick up through the engine): no queue, no waiting message.
        router.attach()
    sessions = AgentSessions(credentials, logins)
    bayeux = BayeuxServer(options or BayeuxOptions(), engine=agent_engine)
    bayeux.security = AgentSecurityPolicy(bayeux, sessions)
    _count_agent_sessions(bayeux, router)
    if isinstance(agent_engine, RedisEngine):
        agent_engine.on_node_lost(router.node_lost)

    async def notify(name: str, channel: str, data: dict[str, Any]) -> None:
        await bayeux.deliver_to_user(user_key(name), channel, data)

    router.notify = notify
    api = _AgentApi(chat, router, sessions, bayeux)
    sub = web.Application(middlewares=[_login_middleware(logins, settings)])
    sub.add_routes(
        [
            web.get("/me", api.me),
            web.post("/me", api.me_operation),
            web.post("/me/channels/chat", api.channel_operation),
            web.get("/me/chats", api.chats),
            web.get("/me/chats/{chat_id}", api.chat),
            web.post("/me/chats/{chat_id}", api.chat_operation),
            web.get("/agents", api.agents),
        ]
    )
    mount(sub, bayeux, NOTIFICATIONS)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await router.start()
        yield
        await router.close()
        await logins.close()

    sub.cleanup_ctx.append(lifecycle)
    app.add_subapp(PREFIX, sub)
    app[ROUTER] = router
    app[AGENT_BAYEUX] = bayeux
    return router


def _agent_engine(engine: Engine | None) -> Engine:
    """The agent Bayeux server's engine: Redis beside a Redis customer engine (under its own
    prefix, so no customer session can be bound to an agent's user), else memory."""
    if isinstance(engine, RedisEngine):
        return RedisEngine(
            engine.url,
            prefix=f"{engine.prefix}:agents",
            node_id=engine.node_id,
            heartbeat=engine.heartbeat,
            node_timeout=engine.node_timeout,
        )
    return MemoryEngine()


def _routing_store(store: ChatStore) -> RoutingStore:
    """Routing lives where the chats live: in Redis when they do."""
    if isinstance(store, RedisChatStore):
        return RedisRoutingStore(store.url, store.prefix)
    return MemoryRoutingStore()


def _login_store(store: ChatStore, timeout_s: float) -> LoginStore:
    """Logins live where the chats live: in Redis when they do, so any node knows them."""
    if isinstance(store, RedisChatStore):
        return RedisLoginStore(store.url, timeout_s, store.prefix)
    return MemoryLoginStore(timeout_s)


def _count_agent_sessions(bayeux: BayeuxServer, router: Router) -> None:
    """Tell the router when an agent's CometD sessions come and go (logout timeout)."""

    def added(session: ServerSession, reason: str) -> None:
        if "agent" in session.attributes:
            router.session_opened(session.attributes["agent"])

    def removed(session: ServerSession, reason: str) -> None:
        if "agent" in session.attributes:
            router.session_closed(session.attributes["agent"])

    bayeux.on_session_added(added)
    bayeux.on_session_removed(removed)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _login_middleware(logins: LoginStore, settings: ApiSettings) -> Any:
    """Find the login the session cookie names (once per request: `request[LOGIN]`); check
    the CSRF token of cookie-authenticated changes; hand the token out on GETs."""

    @web.middleware
    async def login_and_csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            login = await logins.find(request.cookies.get(SESSION_COOKIE))
        except StoreUnavailable:
            raise _unavailable() from None
        request[LOGIN] = login
        if settings.csrf and request.method in _CHANGES and login is not None:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), login.csrf.encode()):
                problem = "wrong" if sent else "missing"
                raise failure(
                    403,
                    FORBIDDEN,
                    f"The CSRF token is {problem}: send the {CSRF_HEADER} header that "
                    "GET /api/v2/me answered",
                )
        response = await handler(request)
        login = request[LOGIN]  # the one the request came with, or the one it opened
        if settings.csrf and request.method == "GET" and not response.prepared and login:
            response.headers["X-CSRF-HEADER"] = CSRF_HEADER
            response.headers[CSRF_HEADER] = login.csrf
        return response

    return login_and_csrf


def ok(**fields: Any) -> web.Response:
    return web.json_response({"statusCode": 0, **fields})


def failure(status: int, code: int, message: str, **headers: str) -> web.HTTPException:
    """A GWS-style error reply: `{"statusCode":N,"statusMessage":"..."}` with a 4xx/5xx."""
    body = json.dumps({"statusCode": code, "statusMessage": message})
    return _STATUS[status](text=body, content_type="application/json", headers=headers or None)


_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    503: web.HTTPServiceUnavailable,
}


@dataclass(frozen=True)
class _ChatOperation:
    """One agent operation on a chat, with the chat's route as its permission check read it.

    That route is also the one its event is delivered by (saving a read per event): the agent
    owned the chat when it was read, and the event commits only while the agent is still in
    the chat (hold, transfer and leave take the agent out; the commit's version check sees
    it), so the event is delivered as if made at the check, before any move in between."""

    agent: str
    chat_id: str
    body: dict[str, Any]
    route: Route


class _AgentApi:
    def __init__(
        self, chat: ChatEngine, router: Router, sessions: AgentSessions, bayeux: BayeuxServer
    ) -> None:
        self.engine = chat
        self.bayeux = bayeux
        self.router = router
        self.sessions = sessions

    async def _agent(self, request: web.Request) -> str:
        login = request[LOGIN]
        if login is not None:
            return login.name
        name = await self.sessions.from_basic(request.headers.get("Authorization", ""))
        if name is None:
            # No Basic challenge for a page's script (the desk sends X-Requested-With): on a
            # request with cookies it would make the browser prompt for a password itself.
            ajax = request.headers.get("X-Requested-With") == "XMLHttpRequest"
            challenge = {} if ajax else {"WWW-Authenticate": 'Basic realm="GWS"'}
            raise failure(401, NOT_AUTHENTICATED, "Not authenticated", **challenge)
        return name

    async def _operation(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        # JSON only: a cross-site form cannot send it without a CORS preflight, so a session
        # cookie alone cannot be abused by another site's page.
        if request.content_type != "application/json":
            raise failure(400, INVALID_INPUT, "The body must be application/json")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise failure(400, INVALID_INPUT, "The body is not valid JSON") from None
        if not isinstance(body, dict):
            raise failure(400, INVALID_INPUT, "The body must be a JSON object")
        operation = body.get("operationName")
        if not isinstance(operation, str) or not operation:
            raise failure(400, MISSING_PARAMETER, "Missing parameter operationName")
        return operation, body

    async def me(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        agent = await self._run(self.router.agent(name))
        user = {
            "id": name,
            "userName": name,
            "roles": ["ROLE_AGENT"],
            "enabled": True,
            "channels": [channel_resource(agent.state)],
        }
        response = ok(user=user)
        if request[LOGIN] is None:
            login = AgentLogin.new(name)
            await self._run(self.sessions.logins.add(login))
            request[LOGIN] = login
            response.set_cookie(
                SESSION_COOKIE, login.token, path="/", httponly=True, samesite="Lax"
            )
        return response

    async def me_operation(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        operation, body = await self._operation(request)
        if operation == "StartContactCenterSession":
            channels = body.get("channels", ["chat"])
            if not isinstance(channels, list) or "chat" not in channels:
                raise failure(400, INVALID_INPUT, "channels must include chat")
            await self._run(self.router.start_session(name))
            return ok()
        if operation == "EndContactCenterSession":
            await self._run(self.router.end_session(name))
            await self._run(self.sessions.logins.remove_agent(name))
            for session in list(self.bayeux.user_sessions(user_key(name))):
                self.bayeux.remove_session(session, "logout")
            response = ok()
            response.del_cookie(SESSION_COOKIE, path="/")
            return response
        raise _unknown(operation)

    async def channel_operation(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        operation, _ = await self._operation(request)
        if operation not in (READY, NOT_READY):
            raise _unknown(operation)
        await self._run(self.router.set_state(name, operation))
        return ok()

    async def agents(self, request: web.Request) -> web.Response:
        await self._agent(request)
        agents = await self._run(self.router.agents())
        max_chats = self.router.settings.max_chats
        return ok(agents=[agent_resource(a.name, a.state, a.available(max_chats)) for a in agents])

    async def chats(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        chats = []
        for chat_id, state in await self._run(self.router.chats_of(name)):
            session = await self._run(self.engine.get(chat_id))
            if session is not None:
                chats.append(chat_resource(session, state))
        return ok(chats=chats)

    async def chat(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        chat_id = request.match_info["chat_id"]
        state = await self._run(self.router.chat_state(name, chat_id))
        session = await self._run(self.engine.get(chat_id)) if state is not None else None
        if state is None or session is None:
            raise _routing_failure(chat_not_found())
        resource = chat_resource(session, state)
        events = await self._run(self.engine.transcript(session, 1))
        resource["messages"] = [event.to_wire() for event in events]
        return ok(chat=resource)

    async def chat_operation(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        chat_id = request.match_info["chat_id"]
        route = await self._run(self.router.route(chat_id))
        state = route.state_for(name) if route is not None else None
        if state is None:
            raise _routing_failure(chat_not_found())
        operation, body = await self._operation(request)
        perform = self._operations.get(operation)
        if perform is None:
            raise _unknown(operation)
        if operation not in CAPABILITIES[state]:
            problem = f"{operation} is not possible while the chat is {state}"
            raise failure(400, INVALID_STATE, problem)
        await self._run(perform(self, _ChatOperation(name, chat_id, body, route)))
        return ok()

    # -- chat operations (each one of a chat's capabilities) -------------------------------
    async def _accept(self, op: _ChatOperation) -> None:
        await self.router.accept(op.agent, op.chat_id)

    async def _reject(self, op: _ChatOperation) -> None:
        await self.router.reject(op.agent, op.chat_id)

    async def _send_message(self, op: _ChatOperation) -> None:
        await self._agent_event(op, m.MESSAGE, _text(op.body, "text"))

    async def _start_typing(self, op: _ChatOperation) -> None:
        await self._agent_event(op, m.TYPING_STARTED)

    async def _stop_typing(self, op: _ChatOperation) -> None:
        await self._agent_event(op, m.TYPING_STOPPED)

    async def _send_url(self, op: _ChatOperation) -> None:
        url = _text(op.body, "pushUrl")
        if len(url) > MAX_URL_LENGTH or not url.startswith(("http://", "https://")):
            problem = f"pushUrl must be an http(s) URL of at most {MAX_URL_LENGTH} characters"
            raise failure(400, INVALID_INPUT, problem)
        await self._agent_event(op, m.PUSH_URL, url)

    async def _send_custom_notice(self, op: _ChatOperation) -> None:
        await self._agent_event(op, m.CUSTOM_NOTICE, _text(op.body, "text"))

    async def _agent_event(self, op: _ChatOperation, kind: str, text: str | None = None) -> None:
        """The agent's event, with the route the operation checked: the router delivers it
        by that route instead of reading the route again (see `_ChatOperation`)."""
        cause = Cause("agent", route=op.route)
        await self.engine.agent_event(op.chat_id, op.agent, kind, text, cause=cause)

    async def _place_on_hold(self, op: _ChatOperation) -> None:
        await self.router.place_on_hold(op.agent, op.chat_id)

    async def _release_hold(self, op: _ChatOperation) -> None:
        await self.router.release_hold(op.agent, op.chat_id)

    async def _transfer(self, op: _ChatOperation) -> None:
        target, queue = op.body.get("agent"), op.body.get("queue")
        if target is not None and queue is not None:
            raise failure(400, INVALID_INPUT, "Transfer to an agent or to a queue, not both")
        for field, value in (("agent", target), ("queue", queue)):
            if value is not None and (not isinstance(value, str) or not value):
                raise failure(400, INVALID_INPUT, f"{field} must be a non-empty string")
        await self.router.transfer(op.agent, op.chat_id, to_agent=target, to_queue=queue)

    async def _complete(self, op: _ChatOperation) -> None:
        await self.engine.complete(op.chat_id)

    async def _leave(self, op: _ChatOperation) -> None:
        await self.router.leave(op.agent, op.chat_id)

    _operations: dict[str, Callable[[_AgentApi, _ChatOperation], Awaitable[None]]] = {
        "Accept": _accept,
        "Reject": _reject,
        "SendMessage": _send_message,
        "StartTyping": _start_typing,
        "StopTyping": _stop_typing,
        "SendUrl": _send_url,
        "SendCustomNotice": _send_custom_notice,
        "PlaceOnHold": _place_on_hold,
        "ReleaseHold": _release_hold,
        "Transfer": _transfer,
        "Complete": _complete,
        "Leave": _leave,
    }

    async def _run(self, awaitable: Awaitable[Any]) -> Any:
        """Await an engine or router call, turning its errors into GWS-style replies."""
        try:
            return await awaitable
        except RoutingError as exc:
            raise _routing_failure(exc) from None
        except StoreUnavailable:
            raise _unavailable() from None
        except ChatError as exc:
            if exc.status == 1:  # transient: the store is unavailable
                raise _unavailable() from None
            raise _routing_failure(chat_not_found()) from None


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise failure(400, MISSING_PARAMETER, f"Missing parameter {name}")
    return value


def _unavailable() -> web.HTTPException:
    return failure(503, UNAVAILABLE, "The chat service is not available at this time")


def _unknown(operation: str) -> web.HTTPException:
    return failure(400, INVALID_INPUT, f"Unknown operationName {operation}")


def _routing_failure(error: RoutingError) -> web.HTTPException:
    return failure(error.status, error.code, error.message)
