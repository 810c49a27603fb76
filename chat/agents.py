"""Agent accounts and chat routing (first increment of the agent side).

Accounts come from the `[agents]` section (`name = <hash from gms-server --hash-password>`)
and from `gms-server --agent USER:PASSWORD` (hashed at start-up). No agent exists unless
configured.

Routing options live in `[routing]`: `max_chats` (per agent, default 3), `offer_timeout_s`
(default 30) and `waiting_text` (the External message a chat gets while no agent is free).

The router observes the chat engine: a client's ParticipantJoined on a queued chat puts the
chat in its service's queue; a Ready agent with free capacity (longest idle first) gets an
offer; Accept joins the agent, Reject or the offer timing out offers the chat to the next
agent. Routing state (agent states, queues, offers) is kept in memory on this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bayeux.tasks import cancel_and_wait

from . import model as m
from .engine import Cause, ChatEngine
from .model import ChatSession, Event
from .passwords import hash_password, is_hash

log = logging.getLogger("gms.agents")

AGENTS_SECTION = "agents"
ROUTING_SECTION = "routing"
DEFAULT_MAX_CHATS = 3
DEFAULT_OFFER_TIMEOUT_S = 30.0
DEFAULT_WAITING_TEXT = "All our agents are busy. Please wait, an agent will be with you shortly."

LOGGED_OUT = "LoggedOut"
NOT_READY = "NotReady"
READY = "Ready"

# Chat states as an agent sees them (GWS style).
INVITED = "Invited"
ACCEPTED = "Accepted"
REVOKED = "Revoked"
COMPLETED = "Completed"

CHATS_CHANNEL = "/v2/me/chats"
CHANNELS_CHANNEL = "/v2/me/channels"

Notify = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""(agent name, channel, data): deliver one CometD message to every session of an agent."""


class RoutingError(Exception):
    """An agent operation that cannot be done; `status` is the HTTP status, `code` GWS's."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


NOT_FOUND = 6
INVALID_STATE = 2


def chat_not_found() -> RoutingError:
    return RoutingError(404, NOT_FOUND, "Chat not found")


@dataclass(frozen=True)
class RoutingSettings:
    max_chats: int = DEFAULT_MAX_CHATS
    offer_timeout_s: float = DEFAULT_OFFER_TIMEOUT_S
    waiting_text: str = DEFAULT_WAITING_TEXT

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, str]]) -> RoutingSettings:
        values = dict(sections.get(ROUTING_SECTION, {}))
        settings = cls()
        unknown = set(values) - {"max_chats", "offer_timeout_s", "waiting_text"}
        if unknown:
            raise ValueError(f"[{ROUTING_SECTION}]: unknown option {sorted(unknown)[0]!r}")
        max_chats, timeout = settings.max_chats, settings.offer_timeout_s
        if "max_chats" in values:
            text = values["max_chats"].strip()
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"[{ROUTING_SECTION}] max_chats: expected a whole number >= 1")
            max_chats = int(text)
        if "offer_timeout_s" in values:
            try:
                timeout = float(values["offer_timeout_s"])
            except ValueError:
                raise ValueError(
                    f"[{ROUTING_SECTION}] offer_timeout_s: expected a number"
                ) from None
            if timeout <= 0:
                raise ValueError(f"[{ROUTING_SECTION}] offer_timeout_s: expected a number > 0")
        text = values.get("waiting_text", settings.waiting_text).strip()
        return cls(max_chats, timeout, text)


def agent_credentials(
    sections: dict[str, dict[str, str]], cli_hashes: dict[str, str] | None = None
) -> dict[str, str]:
    """Agent name -> password hash, from `[agents]` and then the command line (which wins)."""
    credentials: dict[str, str] = {}
    for name, hashed in sections.get(AGENTS_SECTION, {}).items():
        hashed = hashed.strip()
        if not name.strip() or ":" in name or not is_hash(hashed):
            raise ValueError(
                f"[{AGENTS_SECTION}] {name}: expected name = <hash from gms-server --hash-password>"
            )
        credentials[name.strip()] = hashed
    credentials.update(cli_hashes or {})
    return credentials


def hash_cli_agents(pairs: list[str]) -> dict[str, str]:
    """`USER:PASSWORD` flags -> name -> hash; the clear passwords are not kept."""
    hashes: dict[str, str] = {}
    for pair in pairs:
        name, sep, password = pair.partition(":")
        if not sep or not name or not password:
            raise ValueError("--agent: expected USER:PASSWORD")
        hashes[name] = hash_password(password)
    return hashes


@dataclass
class Agent:
    name: str
    state: str = LOGGED_OUT
    chats: set[str] = field(default_factory=set)
    """Chats the agent is in."""
    offers: set[str] = field(default_factory=set)
    """Chats offered to the agent, not yet accepted or rejected."""
    idle_since: float = 0.0
    """When the agent last became Ready or got an offer: the longest idle goes first."""

    @property
    def load(self) -> int:
        return len(self.chats) + len(self.offers)


@dataclass
class _Queued:
    chat_id: str
    service: str
    declined: set[str] = field(default_factory=set)
    waiting_told: bool = False


@dataclass
class _Offer:
    chat_id: str
    agent: str
    timer: asyncio.TimerHandle | None = None


class Router:
    """Agents' states and the chats queued for them; an engine observer."""

    def __init__(
        self, engine: ChatEngine, credentials: dict[str, str], settings: RoutingSettings
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.agents = {name: Agent(name) for name in credentials}
        self.queues: dict[str, deque[_Queued]] = {}
        self.offers: dict[str, _Offer] = {}
        self.notify: Notify | None = None
        self._queued: dict[str, _Queued] = {}
        self._dispatch_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for offer in self.offers.values():
            if offer.timer is not None:
                offer.timer.cancel()
        for task in list(self._tasks):
            await cancel_and_wait(task)

    # -- agent state -----------------------------------------------------------------------
    def agent(self, name: str) -> Agent:
        return self.agents[name]

    async def start_session(self, name: str) -> None:
        agent = self.agents[name]
        if agent.state == LOGGED_OUT:
            agent.state = NOT_READY
            await self._channel_changed(agent)

    async def end_session(self, name: str) -> None:
        agent = self.agents[name]
        if agent.chats:
            raise RoutingError(400, INVALID_STATE, "Complete or leave your chats first")
        agent.state = LOGGED_OUT
        await self._take_back_offers(agent)
        await self._channel_changed(agent)

    async def set_state(self, name: str, state: str) -> None:
        agent = self.agents[name]
        if agent.state == LOGGED_OUT:
            raise RoutingError(400, INVALID_STATE, "Start a contact center session first")
        if agent.state == state:
            return  # GWS ignores duplicate state operations
        agent.state = state
        if state == READY:
            agent.idle_since = time.monotonic()
        else:
            await self._take_back_offers(agent)
        await self._channel_changed(agent)
        self._schedule_dispatch()

    # -- chat operations -------------------------------------------------------------------
    def visible_to(self, name: str, chat_id: str) -> bool:
        agent = self.agents[name]
        return chat_id in agent.chats or chat_id in agent.offers

    def state_of(self, name: str, chat_id: str) -> str:
        return INVITED if chat_id in self.agents[name].offers else ACCEPTED

    async def accept(self, name: str, chat_id: str) -> None:
        offer = self.offers.get(chat_id)
        if offer is None or offer.agent != name:
            raise self._not_offered(name, chat_id)
        self._drop_offer(offer)
        agent = self.agents[name]
        agent.chats.add(chat_id)
        self._dequeue(chat_id)
        try:
            outcome = await self.engine.agent_join(chat_id, name, name)
        except Exception:
            agent.chats.discard(chat_id)
            await self._requeue(chat_id)
            raise
        await self._chat_changed(name, outcome.session, ACCEPTED)

    async def reject(self, name: str, chat_id: str) -> None:
        offer = self.offers.get(chat_id)
        if offer is None or offer.agent != name:
            raise self._not_offered(name, chat_id)
        await self._revoke(offer, declined=True)
        self._schedule_dispatch()

    async def leave(self, name: str, chat_id: str) -> None:
        agent = self.agents[name]
        if chat_id not in agent.chats:
            raise chat_not_found()
        await self.engine.agent_leave(chat_id, name)
        if chat_id in agent.chats:  # the chat goes on without this agent
            agent.chats.discard(chat_id)
            session = await self.engine.get(chat_id)
            if session is not None:
                await self._chat_changed(name, session, COMPLETED)
            self._schedule_dispatch()

    def _not_offered(self, name: str, chat_id: str) -> RoutingError:
        if chat_id in self.agents[name].chats:
            return RoutingError(400, INVALID_STATE, "The chat is not offered to you")
        return chat_not_found()

    # -- engine observer -------------------------------------------------------------------
    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        chat_id = session.chat_id
        holders = [a for a in self.agents.values() if chat_id in a.chats]
        visible = [event.to_wire() for event in events if event.visible]
        if visible:
            for agent in holders:
                await self._send(
                    agent.name,
                    CHATS_CHANNEL,
                    {
                        "messageType": "ChatStateChangeMessage",
                        "notificationType": "NewMessages",
                        "chat": chat_resource(session, ACCEPTED),
                        "messages": visible,
                    },
                )
        if session.ended:
            for agent in holders:
                agent.chats.discard(chat_id)
                await self._chat_changed(agent.name, session, COMPLETED)
            self._dequeue(chat_id)
            offer = self.offers.get(chat_id)
            if offer is not None:
                await self._revoke(offer, declined=False)
            if holders or offer is not None:
                self._schedule_dispatch()
            return
        joined = any(ev.type == m.PARTICIPANT_JOINED and ev.party.type == m.CLIENT for ev in events)
        if joined and session.state == m.QUEUED and chat_id not in self._queued:
            queued = _Queued(chat_id, session.service)
            self._queued[chat_id] = queued
            self.queues.setdefault(session.service, deque()).append(queued)
            self._schedule_dispatch()

    async def _requeue(self, chat_id: str) -> None:
        """Put a chat whose Accept failed back at the head of its queue (if it goes on)."""
        session = await self.engine.get(chat_id)
        if session is None or session.ended or session.agents or chat_id in self._queued:
            return
        queued = _Queued(chat_id, session.service, waiting_told=True)
        self._queued[chat_id] = queued
        self.queues.setdefault(session.service, deque()).appendleft(queued)
        self._schedule_dispatch()

    def _dequeue(self, chat_id: str) -> None:
        queued = self._queued.pop(chat_id, None)
        if queued is not None:
            with contextlib.suppress(ValueError):
                self.queues.get(queued.service, deque()).remove(queued)

    # -- dispatching -----------------------------------------------------------------------
    def _schedule_dispatch(self) -> None:
        task = asyncio.get_running_loop().create_task(self._dispatch(), name="agent-routing")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        async with self._dispatch_lock:
            try:
                await self._dispatch_queued()
            except Exception:
                log.exception("agent routing failed")

    async def _dispatch_queued(self) -> None:
        for queue in list(self.queues.values()):
            for queued in list(queue):
                if queued.chat_id in self.offers:
                    continue
                agent = self._free_agent(queued)
                if agent is None:
                    if not queued.waiting_told and self.settings.waiting_text:
                        queued.waiting_told = True
                        await self._tell_waiting(queued.chat_id)
                    continue
                await self._offer(queued, agent)

    def _free_agent(self, queued: _Queued) -> Agent | None:
        free = [
            a for a in self.agents.values() if a.state == READY and a.load < self.settings.max_chats
        ]
        fresh = [a for a in free if a.name not in queued.declined]
        candidates = fresh or free
        if not candidates:
            return None
        return min(candidates, key=lambda a: a.idle_since)

    async def _offer(self, queued: _Queued, agent: Agent) -> None:
        session = await self.engine.get(queued.chat_id)
        if session is None or session.ended:
            return
        offer = _Offer(queued.chat_id, agent.name)
        loop = asyncio.get_running_loop()
        offer.timer = loop.call_later(self.settings.offer_timeout_s, self._timed_out, offer)
        self.offers[queued.chat_id] = offer
        agent.offers.add(queued.chat_id)
        agent.idle_since = time.monotonic()
        await self._chat_changed(agent.name, session, INVITED)

    def _timed_out(self, offer: _Offer) -> None:
        if self.offers.get(offer.chat_id) is not offer:
            return
        offer.timer = None

        async def revoke_and_dispatch() -> None:
            await self._revoke(offer, declined=True)
            await self._dispatch()

        task = asyncio.get_running_loop().create_task(revoke_and_dispatch(), name="offer-timeout")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop_offer(self, offer: _Offer) -> None:
        if offer.timer is not None:
            offer.timer.cancel()
        self.offers.pop(offer.chat_id, None)
        agent = self.agents.get(offer.agent)
        if agent is not None:
            agent.offers.discard(offer.chat_id)

    async def _revoke(self, offer: _Offer, declined: bool) -> None:
        if self.offers.get(offer.chat_id) is not offer:
            return
        self._drop_offer(offer)
        queued = self._queued.get(offer.chat_id)
        if queued is not None and declined:
            queued.declined.add(offer.agent)
        await self._send(
            offer.agent,
            CHATS_CHANNEL,
            {
                "messageType": "ChatStateChangeMessage",
                "notificationType": "StatusChange",
                "chat": {"id": offer.chat_id, "state": REVOKED, "capabilities": []},
            },
        )

    async def _take_back_offers(self, agent: Agent) -> None:
        for chat_id in list(agent.offers):
            offer = self.offers.get(chat_id)
            if offer is not None:
                await self._revoke(offer, declined=False)
        self._schedule_dispatch()

    async def _tell_waiting(self, chat_id: str) -> None:
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

    async def _channel_changed(self, agent: Agent) -> None:
        await self._send(
            agent.name,
            CHANNELS_CHANNEL,
            {"messageType": "ChannelStateChangeMessage", "channels": [channel_resource(agent)]},
        )

    async def _send(self, name: str, channel: str, data: dict[str, Any]) -> None:
        if self.notify is None:
            return
        try:
            await self.notify(name, channel, data)
        except Exception:
            log.warning("agent %s: notification on %s lost", name, channel, exc_info=True)


CAPABILITIES = {
    INVITED: ["Accept", "Reject"],
    ACCEPTED: ["SendMessage", "StartTyping", "StopTyping", "Complete", "Leave"],
}


def chat_resource(session: ChatSession, state: str) -> dict[str, Any]:
    """A chat as an agent sees it (GWS interaction resource style)."""
    if session.ended:
        state = COMPLETED
    participants = [session.client, *session.agents.values()]
    return {
        "id": session.chat_id,
        "uri": f"/api/v2/me/chats/{session.chat_id}",
        "state": state,
        "service": session.service,
        "subject": session.subject,
        "participants": [p.to_wire() for p in participants],
        "userData": dict(session.user_data),
        "capabilities": list(CAPABILITIES.get(state, [])),
    }


def channel_resource(agent: Agent) -> dict[str, Any]:
    return {"channel": "chat", "userState": {"state": agent.state}}
