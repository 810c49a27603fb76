"""The agent API, in Genesys Web Services (GWS) style: REST under `/api/v2/me` and CometD at
`/api/v2/notifications`.

* `GET /api/v2/me` with Basic authentication answers the agent and sets a session cookie
  (`JSESSIONID`); later requests authenticate with the cookie (or Basic again).
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
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bayeux import BayeuxOptions, BayeuxServer, Engine, MemoryEngine, SecurityPolicy, mount
from bayeux.protocol import Message
from bayeux.redis_engine import RedisEngine
from bayeux.server import RequestContext
from bayeux.session import ServerSession

from . import model as m
from .agents import (
    CAPABILITIES,
    INVALID_INPUT,
    INVALID_STATE,
    NOT_READY,
    READY,
    Router,
    RoutingError,
    RoutingSettings,
    agent_credentials,
    agent_resource,
    channel_resource,
    chat_not_found,
    chat_resource,
)
from .auth import BasicAuth, decode_basic
from .config import ChatConfig, truthy
from .engine import ChatEngine
from .errors import ChatError
from .redis_store import RedisChatStore
from .routing_redis import RedisRoutingStore
from .routing_store import MemoryRoutingStore, RoutingStore
from .store import ChatStore, StoreUnavailable

PREFIX = "/api/v2"
NOTIFICATIONS = "/notifications"
SESSION_COOKIE = "JSESSIONID"
CSRF_HEADER = "X-CSRF-TOKEN"
API_SECTION = "agent-api"
ME_CHANNELS = "/v2/me/"
MISSING_PARAMETER = 1
FORBIDDEN = 3
NOT_AUTHENTICATED = 20
MAX_URL_LENGTH = 2048
ROUTER = web.AppKey("agent_router", Router)
_CHANGES = ("POST", "PUT", "DELETE")


def user_key(name: str) -> str:
    """The Bayeux user an agent's CometD sessions are bound to."""
    return f"agent:{name}"


@dataclass(frozen=True)
class ApiSettings:
    """`[agent-api]`: `csrf` (true by default)."""

    csrf: bool = True

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, str]]) -> ApiSettings:
        values = sections.get(API_SECTION, {})
        unknown = set(values) - {"csrf"}
        if unknown:
            raise ValueError(f"[{API_SECTION}]: unknown option {sorted(unknown)[0]!r}")
        return cls(csrf=truthy(values.get("csrf", "true")))


@dataclass(frozen=True)
class HttpSession:
    """One agent login (the `JSESSIONID` cookie), with its CSRF token."""

    token: str
    name: str
    csrf: str


class AgentSessions:
    """Who is logged in: HTTP sessions (in memory, on this node) and Basic credentials."""

    def __init__(self, credentials: dict[str, str]) -> None:
        self.auth = BasicAuth(credentials, realm="GWS")
        self.sessions: dict[str, HttpSession] = {}

    async def from_basic(self, header: str) -> str | None:
        decoded = decode_basic(header)
        if decoded is None:
            return None
        user, password = decoded
        return user if await self.auth.verify(user, password) else None

    def from_cookie(self, token: str | None) -> HttpSession | None:
        return self.sessions.get(token) if token else None

    def open(self, name: str) -> HttpSession:
        session = HttpSession(secrets.token_urlsafe(32), name, secrets.token_urlsafe(24))
        self.sessions[session.token] = session
        return session

    def close_all(self, name: str) -> None:
        """End every HTTP session of the agent: its cookies and CSRF tokens stop working."""
        for token in [t for t, session in self.sessions.items() if session.name == name]:
            del self.sessions[token]


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
        http = self.sessions.from_cookie(context.cookies.get(SESSION_COOKIE))
        name = http.name if http is not None else None
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
    sessions = AgentSessions(credentials)
    bayeux = BayeuxServer(options or BayeuxOptions(), engine=agent_engine)
    bayeux.security = AgentSecurityPolicy(bayeux, sessions)
    _count_agent_sessions(bayeux, router)
    if isinstance(agent_engine, RedisEngine):
        agent_engine.on_node_lost(router.node_lost)

    async def notify(name: str, channel: str, data: dict[str, Any]) -> None:
        await bayeux.deliver_to_user(user_key(name), channel, data)

    router.notify = notify
    api = _AgentApi(chat, router, sessions, bayeux)
    sub = web.Application(middlewares=[_csrf_middleware(sessions, settings)])
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

    sub.cleanup_ctx.append(lifecycle)
    app.add_subapp(PREFIX, sub)
    app[ROUTER] = router
    return router


def _agent_engine(engine: Engine | None) -> Engine:
    """The agent Bayeux server's engine: Redis beside a Redis customer engine (under its own
    prefix, so no customer session can be bound to an agent's user), else memory."""
    if isinstance(engine, RedisEngine):
        return RedisEngine(engine.url, prefix=f"{engine.prefix}:agents", node_id=engine.node_id)
    return MemoryEngine()


def _routing_store(store: ChatStore) -> RoutingStore:
    """Routing lives where the chats live: in Redis when they do."""
    if isinstance(store, RedisChatStore):
        return RedisRoutingStore(store.url, store.prefix)
    return MemoryRoutingStore()


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


def _csrf_middleware(sessions: AgentSessions, settings: ApiSettings) -> Any:
    """Check the CSRF token of cookie-authenticated changes; hand the token out on GETs."""

    @web.middleware
    async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
        if settings.csrf and request.method in _CHANGES:
            http = sessions.from_cookie(request.cookies.get(SESSION_COOKIE))
            sent = request.headers.get(CSRF_HEADER, "")
            if http is not None and not hmac.compare_digest(sent.encode(), http.csrf.encode()):
                problem = "wrong" if sent else "missing"
                raise failure(
                    403,
                    FORBIDDEN,
                    f"The CSRF token is {problem}: send the {CSRF_HEADER} header that "
                    "GET /api/v2/me answered",
                )
        response = await handler(request)
        if settings.csrf and request.method == "GET" and not response.prepared:
            # The session the request came with, or the one it just opened.
            opened = response.cookies.get(SESSION_COOKIE)
            token = opened.value if opened is not None else request.cookies.get(SESSION_COOKIE)
            http = sessions.from_cookie(token)
            if http is None:
                return response
            response.headers["X-CSRF-HEADER"] = CSRF_HEADER
            response.headers[CSRF_HEADER] = http.csrf
        return response

    return csrf


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


class _AgentApi:
    def __init__(
        self, chat: ChatEngine, router: Router, sessions: AgentSessions, bayeux: BayeuxServer
    ) -> None:
        self.engine = chat
        self.bayeux = bayeux
        self.router = router
        self.sessions = sessions

    async def _agent(self, request: web.Request) -> str:
        http = self.sessions.from_cookie(request.cookies.get(SESSION_COOKIE))
        if http is not None:
            return http.name
        name = await self.sessions.from_basic(request.headers.get("Authorization", ""))
        if name is None:
            raise failure(
                401,
                NOT_AUTHENTICATED,
                "Not authenticated",
                **{"WWW-Authenticate": 'Basic realm="GWS"'},
            )
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
        if self.sessions.from_cookie(request.cookies.get(SESSION_COOKIE)) is None:
            http = self.sessions.open(name)
            response.set_cookie(SESSION_COOKIE, http.token, path="/", httponly=True, samesite="Lax")
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
            self.sessions.close_all(name)
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
        return ok(agents=[agent_resource(agent, max_chats) for agent in agents])

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
        state = await self._run(self.router.chat_state(name, chat_id))
        if state is None:
            raise _routing_failure(chat_not_found())
        operation, body = await self._operation(request)
        perform = self._operations.get(operation)
        if perform is None:
            raise _unknown(operation)
        if operation not in CAPABILITIES[state]:
            problem = f"{operation} is not possible while the chat is {state}"
            raise failure(400, INVALID_STATE, problem)
        await self._run(perform(self, name, chat_id, body))
        return ok()

    # -- chat operations (each one of a chat's capabilities) -------------------------------
    async def _accept(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.router.accept(name, chat_id)

    async def _reject(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.router.reject(name, chat_id)

    async def _send_message(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        text = _text(body, "text")
        await self.engine.agent_event(chat_id, name, m.MESSAGE, text)

    async def _start_typing(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.engine.agent_event(chat_id, name, m.TYPING_STARTED)

    async def _stop_typing(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.engine.agent_event(chat_id, name, m.TYPING_STOPPED)

    async def _send_url(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        url = _text(body, "pushUrl")
        if len(url) > MAX_URL_LENGTH or not url.startswith(("http://", "https://")):
            problem = f"pushUrl must be an http(s) URL of at most {MAX_URL_LENGTH} characters"
            raise failure(400, INVALID_INPUT, problem)
        await self.engine.agent_event(chat_id, name, m.PUSH_URL, url)

    async def _send_custom_notice(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        text = _text(body, "text")
        await self.engine.agent_event(chat_id, name, m.CUSTOM_NOTICE, text)

    async def _place_on_hold(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.router.place_on_hold(name, chat_id)

    async def _release_hold(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.router.release_hold(name, chat_id)

    async def _transfer(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        target, queue = body.get("agent"), body.get("queue")
        if target is not None and queue is not None:
            raise failure(400, INVALID_INPUT, "Transfer to an agent or to a queue, not both")
        for field, value in (("agent", target), ("queue", queue)):
            if value is not None and (not isinstance(value, str) or not value):
                raise failure(400, INVALID_INPUT, f"{field} must be a non-empty string")
        await self.router.transfer(name, chat_id, to_agent=target, to_queue=queue)

    async def _complete(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.engine.complete(chat_id)

    async def _leave(self, name: str, chat_id: str, body: dict[str, Any]) -> None:
        await self.router.leave(name, chat_id)

    _operations: dict[str, Callable[[_AgentApi, str, str, dict[str, Any]], Awaitable[None]]] = {
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
    return failure(503, 4, "The chat service is not available at this time")


def _unknown(operation: str) -> web.HTTPException:
    return failure(400, INVALID_INPUT, f"Unknown operationName {operation}")


def _routing_failure(error: RoutingError) -> web.HTTPException:
    return failure(error.status, error.code, error.message)
