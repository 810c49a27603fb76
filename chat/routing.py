"""Chat routing: the `Router`, which offers queued chats to agents, and its records.

Its options, `[routing]`, are `RoutingSettings` (agents.py).

The router observes the chat engine: a client's ParticipantJoined on a queued chat puts the
chat in its service's queue; a Ready agent with free capacity (longest idle first) gets an
offer; Accept joins the agent, Reject or the offer timing out offers the chat to the next
agent. An accepted chat can be put on hold (the agent leaves with reason HOLD and keeps it)
and retrieved, or transferred to an agent or a queue (the agent leaves with reason
TRANSFER). An agent whose last CometD session has been gone for `logout_timeout_s` is logged
out and its chats go back to the queue (reason TRANSFER).

Routing state lives in a `RoutingStore` (memory, or Redis for a cluster) as records changed
atomically; offer and logout timers live in the chat store's timer set, so whichever node is
alive fires them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from bayeux.tasks import cancel_and_wait

from . import model as m
from .agents import (
    ACCEPTED,
    CHANNELS_CHANNEL,
    CHATS_CHANNEL,
    COMPLETED,
    INVALID_INPUT,
    INVALID_STATE,
    INVITED,
    LOGGED_OUT,
    NOT_FOUND,
    NOT_READY,
    ON_HOLD,
    READY,
    UNAVAILABLE,
    RoutingSettings,
    channel_resource,
    chat_resource,
    revoked_chat_resource,
)
from .engine import Cause, ChatEngine
from .model import ChatSession, Event
from .routing_store import MemoryRoutingStore, Record, Records, RoutingStore

log = logging.getLogger("gms.routing")

T = TypeVar("T")

CLOSE_GRACE_S = 2.0
"""How long a closing router waits for its background work (session counts) to finish."""
OFFER_TIMER = "agent-offer"
LOGOUT_TIMER = "agent-logout"

# A chat's place in routing (its record's `status`).
QUEUED = "queued"
OFFERED = "offered"
ASSIGNED = "assigned"
HELD = "held"
_AGENT_STATE = {OFFERED: INVITED, ASSIGNED: ACCEPTED, HELD: ON_HOLD}

Notify = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""(agent name, channel, data): deliver one CometD message to every session of an agent."""


class RoutingError(Exception):
    """An agent operation that cannot be done; `status` is the HTTP status, `code` GWS's."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def chat_not_found() -> RoutingError:
    return RoutingError(404, NOT_FOUND, "Chat not found")


def _not_possible(chat_id: str) -> RoutingError:
    return RoutingError(400, INVALID_STATE, f"Not possible in the chat's current state ({chat_id})")


# -- routing records ----------------------------------------------------------------------


def _agent_record(name: str) -> str:
    return f"agent:{name}"


def _chat_record(chat_id: str) -> str:
    return f"chat:{chat_id}"


def _queue_record(service: str) -> str:
    return f"queue:{service}"


@dataclass
class AgentRecord:
    """An agent's routing state (record `agent:<name>`, its fields but the name)."""

    name: str
    state: str = LOGGED_OUT
    chats: list[str] = field(default_factory=list)
    """Chats assigned to the agent: accepted, or on hold."""
    offers: list[str] = field(default_factory=list)
    """Chats offered to the agent, not yet accepted or rejected."""
    idle_since: float = 0.0
    """When the agent last became Ready or got an offer (epoch seconds): longest idle first."""
    sessions: dict[str, int] = field(default_factory=dict)
    """Live CometD sessions per node."""

    @property
    def load(self) -> int:
        return len(self.chats) + len(self.offers)

    @property
    def connected(self) -> bool:
        return any(self.sessions.values())

    def available(self, max_chats: int) -> bool:
        """Whether the agent can be offered a chat now."""
        return self.state == READY and self.load < max_chats

    @classmethod
    def load_record(cls, name: str, record: Record | None) -> AgentRecord:
        return cls(name, **record) if record is not None else cls(name)

    def record(self) -> Record:
        record = asdict(self)
        del record["name"]
        return record


@dataclass
class Route:
    """A chat's place in routing (record `chat:<id>`): queued, offered to an agent, or
    assigned to one (accepted or held)."""

    service: str
    status: str = QUEUED
    agent: str | None = None
    declined: list[str] = field(default_factory=list)
    """Agents who rejected it or let the offer time out: asked last."""
    told: bool = False
    """Whether the customer got the waiting message."""
    until: int = 0
    """When the pending offer times out (epoch ms)."""

    @classmethod
    def load_record(cls, record: Record | None) -> Route | None:
        return cls(**record) if record is not None else None

    def record(self) -> Record:
        return asdict(self)

    def state_for(self, name: str) -> str | None:
        """The chat's state as this agent sees it; None if it is not the agent's."""
        return _AGENT_STATE.get(self.status) if self.agent == name else None

    def owned_by(self, name: str, *statuses: str) -> bool:
        return self.agent == name and self.status in statuses


@dataclass
class _RouteChange:
    """What a chat-level routing change may edit: the chat's route, the queues and agents it
    involves."""

    chat_id: str
    route: Route | None
    queues: dict[str, list[str]]
    agents: dict[str, AgentRecord]

    def enqueue(self, service: str, head: bool) -> None:
        queue = self.queues[service]
        if self.chat_id not in queue:
            queue.insert(0 if head else len(queue), self.chat_id)

    def dequeue(self) -> None:
        for queue in self.queues.values():
            if self.chat_id in queue:
                queue.remove(self.chat_id)


class _Moved(Exception):
    """The route changed owner or queue between reading it and changing it: read again."""


class Router:
    """Agents' states, the chats queued for them and their offers; an engine observer."""

    def __init__(
        self,
        engine: ChatEngine,
        credentials: dict[str, str],
        settings: RoutingSettings,
        store: RoutingStore | None = None,
        node_id: str = "local",
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.names = sorted(credentials)
        self.store = store or MemoryRoutingStore()
        self.node_id = node_id
        self.notify: Notify | None = None
        self._dispatch_lock = asyncio.Lock()
        self._dispatch_pending = False
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self) -> None:
        """Start routing the engine's chats (only worth it when there are agents)."""
        self.engine.observers.append(self)
        self.engine.timer_handlers[OFFER_TIMER] = self._offer_due
        self.engine.timer_handlers[LOGOUT_TIMER] = self._logout_due

    async def start(self) -> None:
        """Forget session counts this node left behind (a crash, then a restart with the
        same node id)."""
        await self.store.start()
        for agent in await self.agents():
            if self.node_id in agent.sessions:
                await self._count_session(agent.name, None, self.node_id)

    async def close(self) -> None:
        # Sessions removed at shutdown must still be counted out, or the agent would look
        # connected for ever; then whatever is left is cancelled.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_GRACE_S)
        for task in list(self._tasks):
            await cancel_and_wait(task)
        await self.store.close()

    # -- agent state -----------------------------------------------------------------------
    async def agent(self, name: str) -> AgentRecord:
        return (await self.agents([name]))[0]

    async def agents(self, names: list[str] | None = None) -> list[AgentRecord]:
        names = self.names if names is None else names
        records = await self.store.read([_agent_record(name) for name in names])
        return [AgentRecord.load_record(name, records[_agent_record(name)]) for name in names]

    async def _update_agent(self, name: str, change: Callable[[AgentRecord], T]) -> T:
        key = _agent_record(name)

        def apply(records: Records) -> T:
            agent = AgentRecord.load_record(name, records[key])
            result = change(agent)
            records[key] = agent.record()
            return result

        return await self.store.update([key], apply)

    async def start_session(self, name: str) -> None:
        def change(agent: AgentRecord) -> tuple[bool, bool]:
            started = agent.state == LOGGED_OUT
            if started:
                agent.state = NOT_READY
            return started, agent.connected

        started, connected = await self._update_agent(name, change)
        if started:
            await self._channel_changed(name, NOT_READY)
            if not connected:  # logged in but never connected: the logout timeout runs
                await self._arm_logout(name)

    async def end_session(self, name: str) -> None:
        def change(agent: AgentRecord) -> list[str]:
            if agent.chats:
                raise RoutingError(
                    400, INVALID_STATE, "Complete, transfer or leave your chats first"
                )
            agent.state = LOGGED_OUT
            return list(agent.offers)

        offers = await self._update_agent(name, change)
        await self._take_back(name, offers)
        await self._quietly(self.engine.store.cancel(_subject(name), LOGOUT_TIMER))
        await self._channel_changed(name, LOGGED_OUT)

    async def set_state(self, name: str, state: str) -> None:
        def change(agent: AgentRecord) -> list[str] | None:
            if agent.state == LOGGED_OUT:
                raise RoutingError(400, INVALID_STATE, "Start a contact center session first")
            if agent.state == state:
                return None  # GWS ignores duplicate state operations
            agent.state = state
            if state == READY:
                agent.idle_since = time.time()
            return list(agent.offers)

        offers = await self._update_agent(name, change)
        if offers is None:
            return
        if state != READY:
            await self._take_back(name, offers)
        await self._channel_changed(name, state)
        self._schedule_dispatch()

    # -- CometD sessions and the logout timeout ----------------------------------------------
    def session_opened(self, name: str) -> None:
        """An agent's CometD session started (or was adopted) on this node."""
        self._background(self._count_session(name, 1), "agent-session")

    def session_closed(self, name: str) -> None:
        self._background(self._count_session(name, -1), "agent-session")

    def node_lost(self, node_id: str) -> None:
        """A node died: its agents' sessions are gone (called on one surviving node)."""
        for name in self.names:
            self._background(self._count_session(name, None, node_id), "agent-node-lost")

    async def _count_session(self, name: str, delta: int | None, node_id: str = "") -> None:
        """Add `delta` to this node's session count, or forget `node_id`'s (delta None); arm
        or cancel the logout timer by what is left."""
        node_id = node_id or self.node_id

        def change(agent: AgentRecord) -> tuple[bool, str]:
            count = 0 if delta is None else agent.sessions.get(node_id, 0) + delta
            if count > 0:
                agent.sessions[node_id] = count
            else:
                agent.sessions.pop(node_id, None)
            return agent.connected, agent.state

        connected, state = await self._update_agent(name, change)
        if connected:
            await self.engine.store.cancel(_subject(name), LOGOUT_TIMER)
        elif state != LOGGED_OUT:
            await self._arm_logout(name)

    async def _arm_logout(self, name: str) -> None:
        due = m.now_ms() + int(self.settings.logout_timeout_s * 1000)
        await self._quietly(self.engine.store.schedule(_subject(name), LOGOUT_TIMER, due))

    async def _logout_due(self, subject: str) -> None:
        name = _agent_of(subject)
        if name in self.names:
            await self._quietly(self.logout(name))

    async def logout(self, name: str) -> None:
        """Log out an agent with no CometD session left: offers are taken back and its chats
        go back to their queues (the agent leaves them with reason TRANSFER)."""

        def change(agent: AgentRecord) -> tuple[list[str], list[str]] | None:
            if agent.connected or agent.state == LOGGED_OUT:
                return None  # came back meanwhile, or logged out already
            agent.state = LOGGED_OUT
            return list(agent.chats), list(agent.offers)

        taken = await self._update_agent(name, change)
        if taken is None:
            return
        chats, offers = taken
        log.info("agent %s: logged out, no CometD session left", name)
        await self._take_back(name, offers)
        for chat_id in chats:
            await self._quietly(self.transfer(name, chat_id))
        await self._channel_changed(name, LOGGED_OUT)

    # -- chat operations -------------------------------------------------------------------
    async def route(self, chat_id: str) -> Route | None:
        key = _chat_record(chat_id)
        return Route.load_record((await self.store.read([key]))[key])

    async def chat_state(self, name: str, chat_id: str) -> str | None:
        """The chat's state for this agent (Invited, Accepted, OnHold); None if not theirs."""
        route = await self.route(chat_id)
        return route.state_for(name) if route is not None else None

    async def chats_of(self, name: str) -> list[tuple[str, str]]:
        """(chat id, state) of every chat offered or assigned to the agent."""
        agent = await self.agent(name)
        ids = sorted({*agent.offers, *agent.chats})
        records = await self.store.read([_chat_record(chat_id) for chat_id in ids])
        listed = []
        for chat_id in ids:
            route = Route.load_record(records[_chat_record(chat_id)])
            state = route.state_for(name) if route is not None else None
            if state is not None:
                listed.append((chat_id, state))
        return listed

    async def accept(self, name: str, chat_id: str) -> None:
        def change(tx: _RouteChange) -> None:
            route = tx.route
            if route is None or not route.owned_by(name, OFFERED):
                raise self._not_offered(name, route)
            route.status = ASSIGNED
            tx.dequeue()
            agent = tx.agents[name]
            agent.offers.remove(tx.chat_id)
            agent.chats.append(tx.chat_id)

        await self._change_route(chat_id, change)
        await self._quietly(self.engine.store.cancel(chat_id, OFFER_TIMER))
        try:
            outcome = await self.engine.agent_join(chat_id, name, name)
        except Exception:
            await self._quietly(self._to_queue(name, chat_id, None))
            self._schedule_dispatch()
            raise
        await self._chat_changed(name, outcome.session, ACCEPTED)

    async def reject(self, name: str, chat_id: str) -> None:
        route = await self.route(chat_id)
        if route is None or not route.owned_by(name, OFFERED):
            raise self._not_offered(name, route)
        await self._revoke(chat_id, name, declined=True)
        self._schedule_dispatch()

    async def leave(self, name: str, chat_id: str) -> None:
        """Leave an accepted chat for good (the last agent leaving ends it)."""
        await self.engine.agent_leave(chat_id, name)
        session = await self.engine.get(chat_id)
        if session is not None and not session.ended:
            await self._forget(chat_id, session)  # the chat goes on without this agent

    async def place_on_hold(self, name: str, chat_id: str) -> None:
        """The agent leaves with reason HOLD and keeps the chat (it still counts in its load)."""
        outcome = await self.engine.agent_leave(chat_id, name, m.HOLD)
        await self._switch(name, chat_id, ASSIGNED, HELD)
        await self._chat_changed(name, outcome.session, ON_HOLD)

    async def release_hold(self, name: str, chat_id: str) -> None:
        """The agent joins its held chat again."""
        outcome = await self.engine.agent_join(chat_id, name, name)
        await self._switch(name, chat_id, HELD, ASSIGNED)
        await self._chat_changed(name, outcome.session, ACCEPTED)

    async def _switch(self, name: str, chat_id: str, was: str, status: str) -> None:
        """The agent's chat goes from `was` to `status` (held or assigned), or 400."""

        def change(tx: _RouteChange) -> None:
            if tx.route is None or not tx.route.owned_by(name, was):
                raise _not_possible(chat_id)
            tx.route.status = status

        await self._change_route(chat_id, change)

    async def transfer(
        self, name: str, chat_id: str, to_agent: str | None = None, to_queue: str | None = None
    ) -> None:
        """Offer an accepted or held chat to another agent (Ready, with capacity), or put it
        back in a queue (`to_queue`, else its own); the agent leaves with reason TRANSFER."""
        if to_agent is not None:
            was = await self._to_agent(name, chat_id, to_agent)
        else:
            if to_queue is not None and self.engine.config.service(to_queue) is None:
                raise RoutingError(400, INVALID_INPUT, f"No chat service {to_queue}")
            was = await self._to_queue(name, chat_id, to_queue)
        if was == ASSIGNED:
            try:
                await self.engine.agent_leave(chat_id, name, m.TRANSFER)
            except Exception:
                log.warning("chat %s: %s's leave on transfer failed", chat_id, name, exc_info=True)
        session = await self.engine.get(chat_id)
        if session is not None:
            await self._chat_changed(name, session, COMPLETED)
            if to_agent is not None:
                await self._chat_changed(to_agent, session, INVITED)
        self._schedule_dispatch()

    async def _to_agent(self, name: str, chat_id: str, target: str) -> str:
        if target not in self.names:
            raise RoutingError(400, INVALID_INPUT, f"No agent {target}")
        if target == name:
            raise RoutingError(400, INVALID_INPUT, "A chat cannot be transferred to yourself")
        until = m.now_ms() + int(self.settings.offer_timeout_s * 1000)

        def change(tx: _RouteChange) -> str:
            route = tx.route
            if route is None or not route.owned_by(name, ASSIGNED, HELD):
                raise _not_possible(tx.chat_id)
            other = tx.agents[target]
            if other.state != READY:
                raise RoutingError(400, INVALID_STATE, f"Agent {target} is not Ready")
            if other.load >= self.settings.max_chats:
                raise RoutingError(400, INVALID_STATE, f"Agent {target} has no free capacity")
            was = route.status
            tx.agents[name].chats.remove(tx.chat_id)
            route.status, route.agent, route.until, route.told = OFFERED, target, until, True
            route.declined = [name]
            other.offers.append(tx.chat_id)
            other.idle_since = time.time()
            return was

        was = await self._change_route(chat_id, change, agents=(target,))
        await self._quietly(self.engine.store.schedule(chat_id, OFFER_TIMER, until))
        return was

    async def _to_queue(self, name: str, chat_id: str, service: str | None) -> str:
        """Move a chat of `name`'s back to a queue (at its head: the customer has waited);
        returns the status it had."""
        current = await self.route(chat_id)
        if current is None or current.agent != name:
            raise chat_not_found()
        queue = service or current.service

        def change(tx: _RouteChange) -> str:
            route = tx.route
            if route is None or not route.owned_by(name, ASSIGNED, HELD, OFFERED):
                raise _not_possible(tx.chat_id)
            was = route.status
            agent = tx.agents[name]
            for held in (agent.chats, agent.offers):
                if tx.chat_id in held:
                    held.remove(tx.chat_id)
            route.status, route.agent, route.service, route.told = QUEUED, None, queue, True
            route.declined = [name]
            tx.enqueue(queue, head=True)
            return was

        return await self._change_route(chat_id, change, services=(queue,))

    def _not_offered(self, name: str, route: Route | None) -> RoutingError:
        if route is not None and route.agent == name:
            return RoutingError(400, INVALID_STATE, "The chat is not offered to you")
        return chat_not_found()

    # -- engine observer -------------------------------------------------------------------
    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        chat_id = session.chat_id
        if session.ended:
            await self._forget(chat_id, session)
            return
        visible = [event.to_wire() for event in events if event.visible]
        if visible:
            # An agent operation passes the route it checked (agent_api._ChatOperation).
            route = cause.route if isinstance(cause.route, Route) else await self.route(chat_id)
            if route is not None and route.agent and route.status in (ASSIGNED, HELD):
                data = {
                    "messageType": "ChatStateChangeMessage",
                    "notificationType": "NewMessages",
                    "chat": chat_resource(session, _AGENT_STATE[route.status]),
                    "messages": visible,
                }
                await self._send(route.agent, CHATS_CHANNEL, data)
        joined = any(ev.type == m.PARTICIPANT_JOINED and ev.party.type == m.CLIENT for ev in events)
        if joined and session.state == m.QUEUED:
            await self._enqueue_new(chat_id, session.service)

    async def _enqueue_new(self, chat_id: str, service: str) -> None:
        def change(tx: _RouteChange) -> bool:
            if tx.route is not None:
                return False
            tx.route = Route(service)
            tx.enqueue(service, head=False)
            return True

        if await self._change_route(chat_id, change, services=(service,)):
            self._schedule_dispatch()

    async def _forget(self, chat_id: str, session: ChatSession) -> None:
        """The chat ended (or goes on without routing): drop it from queues and agents."""

        def change(tx: _RouteChange) -> Route | None:
            route = tx.route
            if route is None:
                return None
            tx.dequeue()
            if route.agent is not None:
                agent = tx.agents[route.agent]
                for held in (agent.chats, agent.offers):
                    if tx.chat_id in held:
                        held.remove(tx.chat_id)
            tx.route = None
            return route

        route = await self._change_route(chat_id, change)
        if route is None or route.agent is None:
            return
        if route.status == OFFERED:
            await self._quietly(self.engine.store.cancel(chat_id, OFFER_TIMER))
            await self._revoked(route.agent, chat_id)
        else:
            await self._chat_changed(route.agent, session, COMPLETED)
        self._schedule_dispatch()

    async def _change_route(
        self,
        chat_id: str,
        change: Callable[[_RouteChange], T],
        agents: tuple[str, ...] = (),
        services: tuple[str, ...] = (),
    ) -> T:
        """Change a chat's route together with its queue and its agent (and the extra
        `agents` and `services`), atomically."""
        for _ in range(100):
            current = await self.route(chat_id)
            try:
                return await self._change_route_from(current, chat_id, change, agents, services)
            except _Moved:
                continue
        raise RoutingError(503, UNAVAILABLE, "Routing is too busy; retry")

    async def _change_route_from(
        self,
        current: Route | None,
        chat_id: str,
        change: Callable[[_RouteChange], T],
        agents: tuple[str, ...],
        services: tuple[str, ...],
    ) -> T:
        """One attempt of `_change_route`, locking the records `current` involves; raises
        _Moved if the route no longer is `current` as to service and owner."""
        service = current.service if current is not None else None
        owner = current.agent if current is not None else None
        queues = sorted({*services, *([service] if service else [])})
        names = sorted({*agents, *([owner] if owner else [])})
        chat_key = _chat_record(chat_id)
        keys = [chat_key, *map(_queue_record, queues), *map(_agent_record, names)]

        def apply(records: Records) -> T:
            route = Route.load_record(records[chat_key])
            now = (route.service, route.agent) if route is not None else (None, None)
            if now != (service, owner):
                raise _Moved
            tx = _RouteChange(
                chat_id,
                route,
                {q: list((records[_queue_record(q)] or {}).get("chats", [])) for q in queues},
                {n: AgentRecord.load_record(n, records[_agent_record(n)]) for n in names},
            )
            result = change(tx)
            records[chat_key] = tx.route.record() if tx.route is not None else None
            for q, chats in tx.queues.items():
                records[_queue_record(q)] = {"chats": chats} if chats else None
            for n, agent in tx.agents.items():
                records[_agent_record(n)] = agent.record()
            return result

        return await self.store.update(keys, apply)

    # -- dispatching -----------------------------------------------------------------------
    def _schedule_dispatch(self) -> None:
        if self._dispatch_pending:
            return  # the pending run will see this change too
        self._dispatch_pending = True
        self._background(self._dispatch(), "agent-routing")

    async def _dispatch(self) -> None:
        async with self._dispatch_lock:
            self._dispatch_pending = False
            await self._dispatch_queued()

    async def _dispatch_queued(self) -> None:
        services = sorted(self.engine.config.services)
        queues = await self.store.read([_queue_record(s) for s in services])
        chat_ids = [c for s in services for c in (queues[_queue_record(s)] or {}).get("chats", [])]
        if not chat_ids:
            return
        agents = {agent.name: agent for agent in await self.agents()}
        routes = await self.store.read([_chat_record(chat_id) for chat_id in chat_ids])
        for chat_id in chat_ids:
            route = Route.load_record(routes[_chat_record(chat_id)])
            if route is None or route.status != QUEUED:
                continue
            agent = self._free_agent(agents, route)
            if agent is None:
                if not route.told and self.settings.waiting_text:
                    await self._tell_waiting(chat_id)
                continue
            offered = await self._offer(chat_id, agent.name)
            if offered is not None:
                agents[offered.name] = offered
            else:  # another node got there first: look again
                agents = {agent.name: agent for agent in await self.agents()}

    def _free_agent(self, agents: dict[str, AgentRecord], route: Route) -> AgentRecord | None:
        free = [a for a in agents.values() if a.available(self.settings.max_chats)]
        fresh = [a for a in free if a.name not in route.declined]
        candidates = fresh or free
        if not candidates:
            return None
        return min(candidates, key=lambda a: a.idle_since)

    async def _offer(self, chat_id: str, name: str) -> AgentRecord | None:
        """Offer a queued chat to an agent, if both are still as the dispatcher saw them."""
        until = m.now_ms() + int(self.settings.offer_timeout_s * 1000)

        def change(tx: _RouteChange) -> AgentRecord | None:
            route, agent = tx.route, tx.agents[name]
            if route is None or route.status != QUEUED:
                return None
            if not agent.available(self.settings.max_chats):
                return None
            route.status, route.agent, route.until = OFFERED, name, until
            agent.offers.append(tx.chat_id)
            agent.idle_since = time.time()
            return agent

        agent = await self._change_route(chat_id, change, agents=(name,))
        if agent is None:
            return None
        await self._quietly(self.engine.store.schedule(chat_id, OFFER_TIMER, until))
        session = await self.engine.get(chat_id)
        if session is not None:
            await self._chat_changed(name, session, INVITED)
        return agent

    async def _offer_due(self, chat_id: str) -> None:
        async def revoke() -> None:
            route = await self.route(chat_id)
            if route is None or route.status != OFFERED or route.agent is None:
                return
            if route.until > m.now_ms():
                return  # offered again since; its own timer is set
            await self._revoke(chat_id, route.agent, declined=True, until=route.until)
            await self._dispatch()

        await self._quietly(revoke())

    async def _revoke(
        self, chat_id: str, name: str, declined: bool, until: int | None = None
    ) -> bool:
        """Take an offer back from an agent; the chat is queued again (at the head)."""

        def change(tx: _RouteChange) -> bool:
            route = tx.route
            if route is None or not route.owned_by(name, OFFERED):
                return False
            if until is not None and route.until != until:
                return False
            tx.agents[name].offers.remove(tx.chat_id)
            route.status, route.agent = QUEUED, None
            if declined and name not in route.declined:
                route.declined.append(name)
            tx.enqueue(route.service, head=True)
            return True

        revoked = await self._change_route(chat_id, change)
        if revoked:
            await self._quietly(self.engine.store.cancel(chat_id, OFFER_TIMER))
            await self._revoked(name, chat_id)
        return revoked

    async def _take_back(self, name: str, offers: list[str]) -> None:
        for chat_id in offers:
            await self._revoke(chat_id, name, declined=False)
        if offers:
            self._schedule_dispatch()

    async def _tell_waiting(self, chat_id: str) -> None:
        def change(tx: _RouteChange) -> bool:
            if tx.route is None or tx.route.status != QUEUED or tx.route.told:
                return False
            tx.route.told = True
            return True

        if await self._change_route(chat_id, change):
            try:
                await self.engine.external_event(chat_id, self.settings.waiting_text)
            except Exception:
                log.warning("chat %s: waiting message not added", chat_id, exc_info=True)

    # -- notifications ---------------------------------------------------------------------
    async def _chat_changed(self, name: str, session: ChatSession, state: str) -> None:
        await self._send(
            name,
            CHATS_CHANNEL,
            {
                "messageType": "ChatStateChangeMessage",
                "notificationType": "StatusChange",
                "chat": chat_resource(session, state),
            },
        )

    async def _revoked(self, name: str, chat_id: str) -> None:
        await self._send(
            name,
            CHATS_CHANNEL,
            {
                "messageType": "ChatStateChangeMessage",
                "notificationType": "StatusChange",
                "chat": revoked_chat_resource(chat_id),
            },
        )

    async def _channel_changed(self, name: str, state: str) -> None:
        await self._send(
            name,
            CHANNELS_CHANNEL,
            {"messageType": "ChannelStateChangeMessage", "channels": [channel_resource(state)]},
        )

    async def _send(self, name: str, channel: str, data: dict[str, Any]) -> None:
        if self.notify is None:
            return
        try:
            await self.notify(name, channel, data)
        except Exception:
            log.warning("agent %s: notification on %s lost", name, channel, exc_info=True)

    # -- background work -------------------------------------------------------------------
    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._quietly(work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, work: Awaitable[Any]) -> None:
        """Run work whose failure must not fail its caller (it is logged)."""
        try:
            await work
        except Exception:
            log.exception("agent routing failed")


def _subject(name: str) -> str:
    """An agent's name as a chat-store timer subject (which must not contain `|`)."""
    return name.encode().hex()


def _agent_of(subject: str) -> str:
    try:
        return bytes.fromhex(subject).decode()
    except ValueError:
        return ""
