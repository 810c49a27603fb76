"""The Bayeux server: one pipeline for every incoming message, and the application API.

Pipeline (as CometD's BayeuxServerImpl): field validation -> session lookup -> extensions in
-> security policy and authorizers -> meta handler, service handler or broadcast -> extensions
out. Transports give it decoded messages plus the facts of the request (`RequestContext`) and
get back plain replies and, for /meta/connect, a `HeldConnect` to wait on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import protocol as p
from .channels import SubscriptionIndex, matching_patterns
from .engine import Engine, EngineUnavailable, MemoryEngine
from .extensions import Extension
from .options import BayeuxOptions
from .protocol import Message
from .replay import Replay, event_template
from .security import Authorization, Authorizer, Denied, Operation, SecurityPolicy
from .session import Delivery, HeldConnect, PushLink, ServerSession

log = logging.getLogger("bayeux")


@dataclass
class RequestContext:
    """What the pipeline may know about the transport request carrying a batch."""

    transport: str
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    remote: str | None = None
    browser_id: str | None = None
    new_browser_id: str | None = None
    """Set by a handshake when the transport must set the browser cookie."""
    link: PushLink | None = None
    request: Any = None
    """The underlying aiohttp request, for applications that need more."""


@dataclass
class BatchResult:
    replies: list[Message]
    held: HeldConnect | None = None


@dataclass
class ServiceRequest:
    """A message published on a /service/ channel, handed to its handler."""

    server: BayeuxServer
    session: ServerSession
    channel: str
    data: Any
    message: Message

    def reply(self, data: Any, channel: str | None = None) -> None:
        """Deliver a message to the requester only (the classic echo pattern)."""
        self.session.deliver(channel or self.channel, data)


ServiceHandler = Callable[[ServiceRequest], Awaitable[Any]]
"""A coroutine; a non-None return value goes in the publish reply's `data` (remoteCall)."""
SessionListener = Callable[[ServerSession, str], None]

_HTTP_TRANSPORTS = (p.LONG_POLLING, p.CALLBACK_POLLING)


class BayeuxServer:
    def __init__(
        self,
        options: BayeuxOptions | None = None,
        engine: Engine | None = None,
        security: SecurityPolicy | None = None,
    ) -> None:
        self.options = options or BayeuxOptions()
        self.engine = engine or MemoryEngine()
        self.security = security or SecurityPolicy()
        self.sessions: dict[str, ServerSession] = {}
        self.index: SubscriptionIndex[ServerSession] = SubscriptionIndex()
        self._users: dict[str, set[ServerSession]] = {}
        self._held_per_browser: dict[str, int] = {}
        self._extensions: list[Extension] = []
        self._send_extensions: list[Extension] = []
        self._authorizers: dict[str, list[Authorizer]] = {}
        self._services: dict[str, ServiceHandler] = {}
        self._added_listeners: list[SessionListener] = []
        self._removed_listeners: list[SessionListener] = []
        self._dirty: set[ServerSession] = set()
        self._flush_scheduled = False
        self._sweeper: asyncio.Task[None] | None = None
        self.replay = Replay(self)
        self.draining = False

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        await self.engine.start(self)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="bayeux-sweeper")

    async def close(self) -> None:
        """Hand every session over (or drop it), answer held connects, and stop; safe to
        repeat."""
        if self._sweeper is None:
            return
        self._sweeper.cancel()
        self._sweeper = None
        await self._hand_over_all()
        await self.engine.close()

    async def drain(self) -> int:
        """Send every client of this node elsewhere: sessions are handed over to the engine
        (a Redis engine lets other nodes adopt them) and held connects answered. The node
        keeps serving; `draining` makes /health answer 503 so load balancers move away."""
        self.draining = True
        return await self._hand_over_all()

    def resume(self) -> None:
        self.draining = False

    async def _hand_over_all(self) -> int:
        sessions = list(self.sessions.values())
        try:
            handed_over = await self.engine.save_sessions(sessions)
        except EngineUnavailable:
            handed_over = False
        for session in sessions:
            self.remove_session(session, "handover" if handed_over else "shutdown")
        return len(sessions)

    # -- application API ---------------------------------------------------------------
    def add_extension(self, extension: Extension) -> None:
        self._extensions.append(extension)
        if type(extension).send is not Extension.send:
            self._send_extensions.append(extension)

    def add_authorizer(self, channel: str, authorizer: Authorizer) -> None:
        """Attach an authorizer to a channel or wildcard pattern (CometD semantics)."""
        self._authorizers.setdefault(channel, []).append(authorizer)

    def add_service(self, channel: str, handler: ServiceHandler) -> None:
        """Handle messages published on a /service/ channel (or a `/service/x/*` pattern)."""
        if not p.is_service(channel) or not p.is_valid_channel(channel, allow_wildcards=True):
            raise ValueError(f"not a /service/ channel: {channel}")
        self._services[channel] = handler

    def on_session_added(self, listener: SessionListener) -> None:
        self._added_listeners.append(listener)

    def on_session_removed(self, listener: SessionListener) -> None:
        """Called with (session, reason): disconnect, expired, slow_consumer, server, ..."""
        self._removed_listeners.append(listener)

    async def publish(self, channel: str, data: Any, ext: Any = None) -> None:
        """Publish from the server to every subscriber of a broadcast channel; raises
        EngineUnavailable when the engine cannot take it."""
        if not p.is_valid_channel(channel) or p.is_meta(channel) or p.is_service(channel):
            raise ValueError(f"not a broadcast channel: {channel}")
        await self._broadcast(channel, data, ext, None)

    async def _broadcast(self, channel: str, data: Any, ext: Any, exclude: str | None) -> None:
        if self.replay.is_durable(channel):
            template = event_template(channel, data, ext)
            await self.engine.publish_durable(channel, template, exclude)
            return
        event: Message = {"channel": channel, "data": data}
        if ext is not None:
            event["ext"] = ext
        await self.engine.publish(Delivery(event), exclude)

    async def bind_user(self, session: ServerSession, user_id: str) -> None:
        """Associate a session with an application user, for `deliver_to_user`; once this
        returns, messages for the user reach the session from any node."""
        if session.user_id == user_id:
            return
        self._unbind_user(session)
        await self.engine.user_bound(session, user_id)  # raises before anything is recorded
        session.user_id = user_id
        self._users.setdefault(user_id, set()).add(session)

    async def deliver_to_user(self, user_id: str, channel: str, data: Any, **fields: Any) -> None:
        """Send a message to every session of one user, wherever they are connected."""
        delivery = Delivery({"channel": channel, "data": data, **fields})
        await self.engine.deliver_to_user(user_id, delivery)

    async def deliver_to_session(
        self, node_id: str, client_id: str, channel: str, data: Any, **fields: Any
    ) -> None:
        """Send a message to one session on whichever node holds it (`engine.node_id` of that
        node, as the application recorded it)."""
        delivery = Delivery({"channel": channel, "data": data, **fields})
        await self.engine.deliver_to_session(node_id, client_id, delivery)

    def user_sessions(self, user_id: str) -> set[ServerSession]:
        return self._users.get(user_id, set())

    def remove_session(self, session: ServerSession, reason: str) -> None:
        """Forget a session: its subscriptions, its user binding, its held connect."""
        if session.remove_reason is not None:
            return
        session.removed = True
        session.remove_reason = reason
        self.sessions.pop(session.id, None)
        for pattern in session.subscriptions:
            if self.index.remove(pattern, session):
                self.engine.unsubscribed(pattern)
        session.subscriptions.clear()
        self._unbind_user(session)
        self._dirty.discard(session)
        if session.held is not None:
            session.held.complete()
        for listener in self._removed_listeners:
            _call_listener(listener, session, reason)

    # -- delivery (called by engines) ----------------------------------------------------
    def dispatch_local(self, delivery: Delivery, exclude: str | None = None) -> int:
        """Queue a broadcast for every local subscriber of its channel; returns the count."""
        count = 0
        send_extensions = self._send_extensions
        for session in self.index.subscribers(delivery.channel):
            if session.id == exclude:
                continue
            if send_extensions:
                self.send_to(session, delivery)
            else:
                session.enqueue(delivery)
            count += 1
        return count

    def deliver_to_local_session(self, client_id: str, delivery: Delivery) -> bool:
        session = self.sessions.get(client_id)
        if session is None:
            return False
        self.send_to(session, delivery)
        return True

    def deliver_to_local_user(self, user_id: str, delivery: Delivery) -> int:
        sessions = self._users.get(user_id, ())
        for session in list(sessions):
            self.send_to(session, delivery)
        return len(sessions)

    def schedule_flush(self, session: ServerSession) -> None:
        """Push a session's queue at the end of this loop turn, so that everything queued in
        the same turn leaves in one websocket frame."""
        self._dirty.add(session)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        blocked = [session for session in dirty if not session.flush_link()]
        if blocked:
            # Slow readers: try again shortly; their queues stay bounded by max_queue.
            asyncio.get_running_loop().call_later(0.05, self._retry_flush, blocked)

    def _retry_flush(self, sessions: list[ServerSession]) -> None:
        for session in sessions:
            if not session.removed:
                self.schedule_flush(session)

    def send_to(self, session: ServerSession, delivery: Delivery) -> None:
        """Queue one delivery for one session, through the extensions' `send` hooks."""
        for extension in reversed(self._send_extensions):
            replaced = extension.send(session, delivery)
            if replaced is None:
                return
            delivery = replaced
        session.enqueue(delivery)

    # -- the pipeline --------------------------------------------------------------------
    async def handle_batch(self, messages: list[Message], context: RequestContext) -> BatchResult:
        """Process one transport request. A handshake makes the server ignore the rest of the
        batch, as the spec requires."""
        result = BatchResult(replies=[])
        for message in messages:
            outcome = await self.handle_message(message, context)
            if isinstance(outcome, HeldConnect):
                if result.held is not None:
                    result.held.complete()
                result.held = outcome
            elif outcome is not None:
                result.replies.append(outcome)
            if message.get("channel") == p.META_HANDSHAKE:
                break
        return result

    async def handle_message(
        self, message: Message, context: RequestContext
    ) -> Message | HeldConnect | None:
        channel = message.get("channel")
        if self.options.validate_message_fields:
            problem = p.check_fields(message)
            if problem is not None:
                return p.failure(message, problem)
        elif not isinstance(channel, str):
            return p.failure(message, p.CHANNEL_MISSING)
        assert isinstance(channel, str)
        if channel == p.META_HANDSHAKE:
            return await self._handshake(message, context)
        session = self._find_session(message, context) or await self._adopt(message, context)
        if session is None:
            return self._unknown_session(message)
        session.last_seen = asyncio.get_running_loop().time()
        if not self._incoming(session, message, context):
            return self._outgoing(session, p.failure(message, p.MESSAGE_DELETED))
        if channel == p.META_CONNECT:
            return self._connect(session, message, context)
        if channel == p.META_SUBSCRIBE:
            reply = await self._subscribe(session, message)
        elif channel == p.META_UNSUBSCRIBE:
            reply = self._unsubscribe(session, message)
        elif channel == p.META_DISCONNECT:
            reply = self._disconnect(session, message)
        elif p.is_meta(channel):
            reply = p.failure(message, p.error(400, "unknown_meta_channel", channel))
        else:
            reply = await self._publish(session, message)
        return self._outgoing(session, reply)

    def finish_connect(self, held: HeldConnect) -> tuple[list[Delivery], Message]:
        """Build the answer to a held connect: the queued messages and the connect reply."""
        session = held.session
        reply = held.reply
        if session.removed:
            return [], self._removed_reply(session, reply)
        if held.superseded:
            return [], reply
        deliveries, batch = session.take_for_connect()
        session.ack_batch_sent = batch
        session.last_seen = asyncio.get_running_loop().time()
        self._outgoing(session, reply)
        session.ack_batch_sent = None
        return deliveries, reply

    # -- meta handlers -------------------------------------------------------------------
    async def _handshake(self, message: Message, context: RequestContext) -> Message:
        offered = message.get("supportedConnectionTypes")
        allowed = list(self.options.allowed_transports)
        if isinstance(offered, list) and not {
            p.CONNECTION_TYPE_ALIASES.get(t, t) for t in offered if isinstance(t, str)
        } & set(allowed):
            return self._handshake_failure(
                message, p.CONNECTION_TYPE_UNSUPPORTED, p.RECONNECT_NONE, allowed
            )
        if len(self.sessions) >= self.options.max_sessions:
            return self._handshake_failure(
                message, p.error(503, "too_many_sessions"), p.RECONNECT_HANDSHAKE, allowed
            )
        browser_id = context.browser_id
        if browser_id is None:
            browser_id = context.new_browser_id = p.new_id()
            context.browser_id = browser_id
        session = ServerSession(self, p.new_id(), browser_id)
        session.transport = context.transport
        if not self._incoming(session, message, context):
            return self._outgoing(session, p.failure(message, p.MESSAGE_DELETED))
        failure = await self._handshake_denial(session, message, context)
        if failure is not None:
            self._unbind_user(session)  # the policy may have bound it
            return self._handshake_failure(message, failure[0], failure[1], allowed)
        self.sessions[session.id] = session
        for listener in self._added_listeners:
            _call_listener(listener, session, "handshake")
        reply = p.reply_to(
            message,
            successful=True,
            clientId=session.id,
            version=p.BAYEUX_VERSION,
            supportedConnectionTypes=allowed,
            advice=self._advice(),
        )
        return self._outgoing(session, reply)

    async def _handshake_denial(
        self, session: ServerSession, message: Message, context: RequestContext
    ) -> tuple[str, str | None] | None:
        """The error and reconnect advice if the security policy refuses, else None."""
        try:
            if await self.security.can_handshake(session, message, context):
                return None
            return p.HANDSHAKE_DENIED, None
        except Denied as denial:
            return p.denied("handshake", denial.reason), denial.reconnect
        except EngineUnavailable:
            return p.ENGINE_UNAVAILABLE, p.RECONNECT_HANDSHAKE

    def _handshake_failure(
        self, message: Message, err: str, reconnect: str | None, allowed: list[str]
    ) -> Message:
        reply = p.failure(
            message,
            err,
            version=p.BAYEUX_VERSION,
            supportedConnectionTypes=allowed,
            advice={"reconnect": reconnect or p.RECONNECT_NONE, "interval": 0},
        )
        return self._outgoing(None, reply)

    def _connect(
        self, session: ServerSession, message: Message, context: RequestContext
    ) -> HeldConnect:
        session.transport = context.transport
        if context.link is not None:
            session.link = context.link
        reply = p.reply_to(message, successful=True, advice=self._advice())
        previous = session.held
        if previous is not None:
            previous.superseded = True
            previous.complete()
        first = not session.connected
        session.connected = True
        timeout = self._connect_timeout(message)
        pushed = session.link is not None and not session.connect_only
        if pushed and session.pending:
            self.schedule_flush(session)  # the socket carries them; keep the connect held
        elif session.pending:
            return HeldConnect(session, reply, 0)
        if timeout <= 0 or first:
            return HeldConnect(session, reply, 0)
        if self._too_many_polls(session, context):
            reply["advice"] = {
                "reconnect": p.RECONNECT_RETRY,
                "interval": self.options.multi_session_interval,
                "multiple-clients": True,
            }
            return HeldConnect(session, reply, 0)
        if context.transport not in _HTTP_TRANSPORTS or session.browser_id is None:
            return HeldConnect(session, reply, timeout)
        return HeldConnect(session, reply, timeout, self._count_poll(session.browser_id))

    def _connect_timeout(self, message: Message) -> float:
        timeout = self.options.timeout
        advised = p.client_advice(message).get("timeout")
        if isinstance(advised, (int, float)) and not isinstance(advised, bool) and advised >= 0:
            timeout = min(int(advised), timeout)
        return timeout / 1000

    def _too_many_polls(self, session: ServerSession, context: RequestContext) -> bool:
        if context.transport not in _HTTP_TRANSPORTS or session.browser_id is None:
            return False
        limit = self.options.max_sessions_per_browser
        return limit >= 0 and self._held_per_browser.get(session.browser_id, 0) >= limit

    def _count_poll(self, browser: str) -> Callable[[], None]:
        """Count a held long-poll against its browser; returns the matching release."""
        self._held_per_browser[browser] = self._held_per_browser.get(browser, 0) + 1

        def release() -> None:
            remaining = self._held_per_browser.get(browser, 1) - 1
            if remaining > 0:
                self._held_per_browser[browser] = remaining
            else:
                self._held_per_browser.pop(browser, None)

        return release

    async def _subscribe(self, session: ServerSession, message: Message) -> Message:
        patterns = p.subscriptions_of(message)
        echo = {"subscription": message.get("subscription")}
        if patterns is None:
            return p.failure(message, p.SUBSCRIPTION_MISSING, **echo)
        if not all(p.is_valid_channel(c, allow_wildcards=True) for c in patterns):
            return p.failure(message, p.SUBSCRIPTION_INVALID, **echo)
        new = [c for c in patterns if c not in session.subscriptions and not p.is_service(c)]
        if len(session.subscriptions) + len(new) > self.options.max_subscriptions:
            return p.failure(message, p.error(403, "too_many_subscriptions"), **echo)
        for pattern in patterns:
            denial = await self._check(Operation.SUBSCRIBE, session, pattern, message)
            if denial is not None:
                return p.failure(message, denial, **echo)
        try:
            replay = await self.replay.requests(message, patterns)
        except EngineUnavailable:
            return p.failure(message, p.ENGINE_UNAVAILABLE, **echo)
        if isinstance(replay, str):
            return p.failure(message, replay, **echo)
        for pattern in new:
            session.subscriptions.add(pattern)
            if self.index.add(pattern, session):
                try:
                    await self.engine.subscribed(pattern)
                except EngineUnavailable:
                    self._unsubscribe_all(session, new)
                    return p.failure(message, p.ENGINE_UNAVAILABLE, **echo)
        try:
            if replay:
                await self.replay.deliver(session, replay)
            await self.replay.track(session, new)
        except EngineUnavailable:
            return p.failure(message, p.ENGINE_UNAVAILABLE, **echo)
        return p.reply_to(message, successful=True, **echo)

    def _unsubscribe(self, session: ServerSession, message: Message) -> Message:
        patterns = p.subscriptions_of(message)
        echo = {"subscription": message.get("subscription")}
        if patterns is None:
            return p.failure(message, p.SUBSCRIPTION_MISSING, **echo)
        self._unsubscribe_all(session, patterns)
        return p.reply_to(message, successful=True, **echo)

    def _unsubscribe_all(self, session: ServerSession, patterns: list[str]) -> None:
        for pattern in patterns:
            if pattern in session.subscriptions:
                session.subscriptions.discard(pattern)
                if self.index.remove(pattern, session):
                    self.engine.unsubscribed(pattern)

    def _disconnect(self, session: ServerSession, message: Message) -> Message:
        self.remove_session(session, "disconnect")
        return p.reply_to(message, successful=True)

    async def _publish(self, session: ServerSession, message: Message) -> Message:
        channel: str = message["channel"]
        if p.is_wildcard(channel):
            return p.failure(message, p.CHANNEL_INVALID)
        if "data" not in message:
            return p.failure(message, p.DATA_MISSING)
        denial = await self._check(Operation.PUBLISH, session, channel, message)
        if denial is not None:
            return p.failure(message, denial)
        if p.is_service(channel):
            return await self._call_service(session, channel, message)
        exclude = None if self.options.broadcast_to_publisher else session.id
        try:
            await self._broadcast(channel, message["data"], message.get("ext"), exclude)
        except EngineUnavailable:
            return p.failure(message, p.ENGINE_UNAVAILABLE)
        return p.reply_to(message, successful=True)

    async def _call_service(
        self, session: ServerSession, channel: str, message: Message
    ) -> Message:
        handler = self._service_for(channel)
        if handler is None:
            # CometD answers a publish to a service nobody handles as a success.
            return p.reply_to(message, successful=True)
        request = ServiceRequest(self, session, channel, message["data"], message)
        try:
            data = await handler(request)
        except Denied as denial:
            return p.failure(message, p.denied("publish", denial.reason))
        except EngineUnavailable:
            return p.failure(message, p.ENGINE_UNAVAILABLE)
        except Exception:
            log.exception("service handler for %s failed", channel)
            return p.failure(message, p.SERVICE_FAILED)
        if data is None:
            return p.reply_to(message, successful=True)
        return p.reply_to(message, successful=True, data=data)

    def _service_for(self, channel: str) -> ServiceHandler | None:
        for pattern in matching_patterns(channel):
            handler = self._services.get(pattern)
            if handler is not None:
                return handler
        return None

    async def _check(
        self, operation: Operation, session: ServerSession, channel: str, message: Message
    ) -> str | None:
        """The security policy, then the channel's authorizers; a Bayeux error or None."""
        name = operation.value
        try:
            if operation is Operation.SUBSCRIBE:
                allowed = await self.security.can_subscribe(session, channel, message)
            else:
                allowed = await self.security.can_publish(session, channel, message)
            if not allowed:
                return p.denied(name, "denied_by_security_policy")
            return await self._authorize(operation, session, channel, message)
        except Denied as denial:
            return p.denied(name, denial.reason)

    async def _authorize(
        self, operation: Operation, session: ServerSession, channel: str, message: Message
    ) -> str | None:
        if not self._authorizers:
            return None
        authorizers = [
            a
            for pattern in dict.fromkeys(matching_patterns(channel))
            for a in self._authorizers.get(pattern, ())
        ]
        if not authorizers:
            return None
        granted = False
        for authorizer in authorizers:
            result = authorizer(operation, channel, session, message)
            if inspect.isawaitable(result):
                result = await result
            if result is Authorization.DENY:
                return p.denied(operation.value, "denied_by_authorizer")
            granted = granted or result is Authorization.GRANT
        return None if granted else p.denied(operation.value, "not_granted")

    # -- helpers -------------------------------------------------------------------------
    def _find_session(
        self, message: Message, context: RequestContext, candidate: ServerSession | None = None
    ) -> ServerSession | None:
        """The message's session, if the request may use it (the browser cookie check)."""
        client_id = message.get("clientId")
        session = candidate
        if session is None and isinstance(client_id, str):
            session = self.sessions.get(client_id)
        if session is None or self.options.trust_client_session:
            return session
        # The browser cookie binds an HTTP session to the browser that created it.
        if context.transport in _HTTP_TRANSPORTS and session.browser_id != context.browser_id:
            return None
        if context.browser_id is not None and session.browser_id not in (
            None,
            context.browser_id,
        ):
            return None
        return session

    async def _adopt(self, message: Message, context: RequestContext) -> ServerSession | None:
        """Take over a session that a node handed over when it shut down, so its client
        carries on without a new handshake and without losing queued messages."""
        client_id = message.get("clientId")
        if not isinstance(client_id, str) or client_id in self.sessions:
            return None
        try:
            saved = await self.engine.restore_session(client_id)
        except EngineUnavailable:
            return None
        if saved is None:
            return None
        snapshot = orjson.loads(saved)
        session = ServerSession(self, client_id, snapshot.get("browser"))
        if self._find_session(message, context, session) is None:
            await self.engine.return_session(client_id, saved)  # not this browser's
            return None
        session.attributes.update(snapshot.get("attributes") or {})
        session.restore_queue(snapshot)
        self.sessions[client_id] = session
        try:
            for pattern in snapshot.get("subscriptions") or ():
                session.subscriptions.add(pattern)
                if self.index.add(pattern, session):
                    await self.engine.subscribed(pattern)
            if snapshot.get("user"):
                await self.bind_user(session, snapshot["user"])
            await self.replay.resume(session, snapshot.get("replay") or {})
        except EngineUnavailable:
            self.remove_session(session, "adopt_failed")
            return None
        session.connected = True
        for listener in self._added_listeners:
            _call_listener(listener, session, "adopted")
        return session

    def _unknown_session(self, message: Message) -> Message:
        reply = p.failure(message, p.SESSION_UNKNOWN)
        channel = message.get("channel")
        if channel in (p.META_CONNECT, p.META_HANDSHAKE) or not p.is_meta(str(channel)):
            reply["advice"] = {"reconnect": p.RECONNECT_HANDSHAKE, "interval": 0}
        return self._outgoing(None, reply)

    def _removed_reply(self, session: ServerSession, reply: Message) -> Message:
        if session.remove_reason == "disconnect":
            reply["advice"] = {"reconnect": p.RECONNECT_NONE, "interval": 0}
            return reply
        if session.remove_reason == "handover":
            # Reconnect (to another node, or to this one restarted) and carry on; the spread
            # keeps a node's clients from all arriving at the same instant.
            interval = random.randint(0, self.options.handover_spread)
            reply["advice"] = {"reconnect": p.RECONNECT_RETRY, "interval": interval}
            return reply
        return p.failure(
            reply,
            p.SESSION_UNKNOWN,
            advice={"reconnect": p.RECONNECT_HANDSHAKE, "interval": 0},
        )

    def _advice(self) -> dict[str, Any]:
        advice: dict[str, Any] = {
            "reconnect": p.RECONNECT_RETRY,
            "interval": self.options.interval,
            "timeout": self.options.timeout,
        }
        if self.options.handshake_reconnect:
            advice["maxInterval"] = self.options.max_interval
        return advice

    def _incoming(
        self, session: ServerSession | None, message: Message, context: RequestContext
    ) -> bool:
        return all(ext.incoming(session, message, context) for ext in self._extensions)

    def _outgoing(self, session: ServerSession | None, reply: Message) -> Message:
        for extension in reversed(self._extensions):
            if not extension.outgoing(session, reply):
                return p.failure(reply, p.MESSAGE_DELETED)
        return reply

    def _unbind_user(self, session: ServerSession) -> None:
        user_id = session.user_id
        if user_id is None:
            return
        session.user_id = None
        sessions = self._users.get(user_id)
        if sessions is not None and session in sessions:
            sessions.discard(session)
            if not sessions:
                del self._users[user_id]
            self.engine.user_unbound(session, user_id)

    async def _sweep_forever(self) -> None:
        period = self.options.sweep_period / 1000
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
            except Exception:
                log.exception("session sweep failed")

    def sweep(self) -> int:
        """Remove sessions that stopped sending /meta/connect (CometD's maxInterval)."""
        now = asyncio.get_running_loop().time()
        limit = self.options.max_interval / 1000
        expired = [
            s for s in self.sessions.values() if s.held is None and now - s.last_seen > limit
        ]
        for session in expired:
            self.remove_session(session, "expired")
        return len(expired)


def _call_listener(listener: SessionListener, session: ServerSession, reason: str) -> None:
    try:
        listener(session, reason)
    except Exception:
        log.exception("session listener failed")
