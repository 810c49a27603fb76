"""The agent API, in Genesys Web Services (GWS) style: REST under `/api/v2/me` and CometD at
`/api/v2/notifications`.

* `GET /api/v2/me` with Basic authentication answers the agent and sets a session cookie
  (`JSESSIONID`); later requests authenticate with the cookie (or Basic again).
* Requests are `POST`s with an `operationName`, answered `{"statusCode":0}`; results and
  events arrive over CometD on the agent's own channels: `/v2/me/chats`
  (`ChatStateChangeMessage`) and `/v2/me/channels` (`ChannelStateChangeMessage`).
* Errors answer `{"statusCode":N,"statusMessage":"..."}` with a 4xx status (GWS codes: 1
  missing parameter, 2 not valid in the current state, 6 not found, 10 invalid input,
  20 not authenticated).

CometD runs on its own Bayeux server mounted in a sub-application at `/api/v2`: its sessions
are agents (bound as Bayeux user `agent:<name>`), not customers, and its policy differs
from the customer server's (cookie or Basic handshake, `/v2/me/*` only, no publishing).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bayeux import BayeuxOptions, BayeuxServer, MemoryEngine, SecurityPolicy, mount
from bayeux.protocol import Message
from bayeux.server import RequestContext
from bayeux.session import ServerSession

from . import model as m
from .agents import (
    INVALID_STATE,
    NOT_READY,
    READY,
    Router,
    RoutingError,
    RoutingSettings,
    agent_credentials,
    channel_resource,
    chat_not_found,
    chat_resource,
)
from .auth import BasicAuth, decode_basic
from .config import ChatConfig
from .engine import ChatEngine
from .errors import ChatError

PREFIX = "/api/v2"
NOTIFICATIONS = "/notifications"
SESSION_COOKIE = "JSESSIONID"
ME_CHANNELS = "/v2/me/"
MISSING_PARAMETER = 1
INVALID_INPUT = 10
NOT_AUTHENTICATED = 20
ROUTER = web.AppKey("agent_router", Router)


def user_key(name: str) -> str:
    """The Bayeux user an agent's CometD sessions are bound to."""
    return f"agent:{name}"


class AgentSessions:
    """Who is logged in: HTTP session tokens (in memory) and Basic credentials."""

    def __init__(self, credentials: dict[str, str]) -> None:
        self.auth = BasicAuth(credentials, realm="GWS")
        self.tokens: dict[str, str] = {}

    async def from_basic(self, header: str) -> str | None:
        decoded = decode_basic(header)
        if decoded is None:
            return None
        user, password = decoded
        return user if await self.auth.verify(user, password) else None

    def from_cookie(self, token: str | None) -> str | None:
        return self.tokens.get(token) if token else None

    def open(self, name: str) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = name
        return token

    def close_all(self, name: str) -> None:
        for token in [t for t, user in self.tokens.items() if user == name]:
            del self.tokens[token]


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
        name = self.sessions.from_cookie(context.cookies.get(SESSION_COOKIE))
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
) -> Router:
    """Add the agent API and its router to `app` (agents from `[agents]` and `cli_agents`,
    name -> password hash)."""
    credentials = agent_credentials(config.sections, cli_agents)
    router = Router(chat, credentials, RoutingSettings.from_sections(config.sections))
    if credentials:
        # Without agents there is nothing to route to (chats are then for other agent-side
        # integrations to pick up through the engine): no queue, no waiting message.
        chat.observers.append(router)
    sessions = AgentSessions(credentials)
    bayeux = BayeuxServer(options or BayeuxOptions(), engine=MemoryEngine())
    bayeux.security = AgentSecurityPolicy(bayeux, sessions)

    async def notify(name: str, channel: str, data: dict[str, Any]) -> None:
        await bayeux.deliver_to_user(user_key(name), channel, data)

    router.notify = notify
    api = _AgentApi(chat, router, sessions, bayeux)
    sub = web.Application()
    sub.add_routes(
        [
            web.get("/me", api.me),
            web.post("/me", api.me_operation),
            web.post("/me/channels/chat", api.channel_operation),
            web.get("/me/chats", api.chats),
            web.get("/me/chats/{chat_id}", api.chat),
            web.post("/me/chats/{chat_id}", api.chat_operation),
        ]
    )
    mount(sub, bayeux, NOTIFICATIONS)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await router.close()

    sub.cleanup_ctx.append(lifecycle)
    app.add_subapp(PREFIX, sub)
    app[ROUTER] = router
    return router


def ok(**fields: Any) -> web.Response:
    return web.json_response({"statusCode": 0, **fields})


def failure(status: int, code: int, message: str, **headers: str) -> web.HTTPException:
    """A GWS-style error reply: `{"statusCode":N,"statusMessage":"..."}` with a 4xx/5xx."""
    body = json.dumps({"statusCode": code, "statusMessage": message})
    return _STATUS[status](text=body, content_type="application/json", headers=headers or None)


_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
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
        name = self.sessions.from_cookie(request.cookies.get(SESSION_COOKIE))
        if name is None:
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
        agent = self.router.agent(name)
        user = {
            "id": name,
            "userName": name,
            "roles": ["ROLE_AGENT"],
            "enabled": True,
            "channels": [channel_resource(agent)],
        }
        response = ok(user=user)
        if self.sessions.from_cookie(request.cookies.get(SESSION_COOKIE)) != name:
            response.set_cookie(
                SESSION_COOKIE, self.sessions.open(name), path="/", httponly=True, samesite="Lax"
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

    async def chats(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        agent = self.router.agent(name)
        chats = []
        for chat_id in sorted(agent.offers | agent.chats):
            session = await self._run(self.engine.get(chat_id))
            if session is not None:
                chats.append(chat_resource(session, self.router.state_of(name, chat_id)))
        return ok(chats=chats)

    async def chat(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        chat_id = request.match_info["chat_id"]
        if not self.router.visible_to(name, chat_id):
            raise _routing_failure(chat_not_found())
        session = await self._run(self.engine.get(chat_id))
        if session is None:
            raise _routing_failure(chat_not_found())
        resource = chat_resource(session, self.router.state_of(name, chat_id))
        events = await self._run(self.engine.transcript(session, 1))
        resource["messages"] = [event.to_wire() for event in events]
        return ok(chat=resource)

    async def chat_operation(self, request: web.Request) -> web.Response:
        name = await self._agent(request)
        chat_id = request.match_info["chat_id"]
        if not self.router.visible_to(name, chat_id):
            raise _routing_failure(chat_not_found())
        operation, body = await self._operation(request)
        agent = self.router.agent(name)
        if operation == "Accept":
            await self._run(self.router.accept(name, chat_id))
        elif operation == "Reject":
            await self._run(self.router.reject(name, chat_id))
        elif operation in _IN_CHAT:
            if chat_id not in agent.chats:
                raise failure(400, INVALID_STATE, f"{operation} needs an accepted chat")
            await self._in_chat(name, chat_id, operation, body)
        else:
            raise _unknown(operation)
        return ok()

    async def _in_chat(self, name: str, chat_id: str, operation: str, body: dict[str, Any]) -> None:
        if operation == "SendMessage":
            text = body.get("text")
            if not isinstance(text, str) or not text:
                raise failure(400, MISSING_PARAMETER, "Missing parameter text")
            await self._run(self.engine.agent_event(chat_id, name, m.MESSAGE, text))
        elif operation == "StartTyping":
            await self._run(self.engine.agent_event(chat_id, name, m.TYPING_STARTED))
        elif operation == "StopTyping":
            await self._run(self.engine.agent_event(chat_id, name, m.TYPING_STOPPED))
        elif operation == "Complete":
            await self._run(self.engine.complete(chat_id))
        else:
            await self._run(self.router.leave(name, chat_id))

    async def _run(self, awaitable: Any) -> Any:
        """Await an engine or router call, turning its errors into GWS-style replies."""
        try:
            return await awaitable
        except RoutingError as exc:
            raise _routing_failure(exc) from None
        except ChatError as exc:
            if exc.status == 1:  # transient: the store is unavailable
                raise failure(503, 4, "The chat service is not available at this time") from None
            raise _routing_failure(chat_not_found()) from None


_IN_CHAT = ("SendMessage", "StartTyping", "StopTyping", "Complete", "Leave")


def _unknown(operation: str) -> web.HTTPException:
    return failure(400, INVALID_INPUT, f"Unknown operationName {operation}")


def _routing_failure(error: RoutingError) -> web.HTTPException:
    return failure(error.status, error.code, error.message)
