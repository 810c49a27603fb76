"""Agent accounts and settings, and the agent side as GWS shows it: agent and chat states,
what an agent may do to a chat in each state, and the resources (JSON) the agent API and its
notifications carry.

Accounts come from the `[agents]` section (`name = <hash from gms-server --hash-password>`)
and from `gms-server --agent USER:PASSWORD` (hashed at start-up). No agent exists unless
configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import ChatSession
from .passwords import hash_password, is_hash

AGENTS_SECTION = "agents"
ROUTING_SECTION = "routing"
DEFAULT_MAX_CHATS = 3
DEFAULT_OFFER_TIMEOUT_S = 30.0
DEFAULT_LOGOUT_TIMEOUT_S = 60.0
DEFAULT_WAITING_TEXT = "All our agents are busy. Please wait, an agent will be with you shortly."

# An agent's state on the chat channel.
LOGGED_OUT = "LoggedOut"
NOT_READY = "NotReady"
READY = "Ready"

# Chat states as an agent sees them (GWS style).
INVITED = "Invited"
ACCEPTED = "Accepted"
ON_HOLD = "OnHold"
REVOKED = "Revoked"
COMPLETED = "Completed"

CAPABILITIES = {
    INVITED: ["Accept", "Reject"],
    ACCEPTED: [
        "SendMessage",
        "StartTyping",
        "StopTyping",
        "SendUrl",
        "SendCustomNotice",
        "PlaceOnHold",
        "Transfer",
        "Complete",
        "Leave",
    ],
    ON_HOLD: ["ReleaseHold", "Transfer", "Complete"],
}
"""The operations possible on a chat in each state (the chat's `capabilities`)."""

# The agent's own CometD channels.
CHATS_CHANNEL = "/v2/me/chats"
CHANNELS_CHANNEL = "/v2/me/channels"

# GWS `statusCode`s of failed requests.
MISSING_PARAMETER = 1
INVALID_STATE = 2
FORBIDDEN = 3
UNAVAILABLE = 4
NOT_FOUND = 6
INVALID_INPUT = 10
NOT_AUTHENTICATED = 20


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


@dataclass(frozen=True)
class RoutingSettings:
    """`[routing]`: `max_chats` per agent, `offer_timeout_s`, `logout_timeout_s`, and
    `waiting_text` (the External message a chat gets while no agent is free)."""

    max_chats: int = DEFAULT_MAX_CHATS
    offer_timeout_s: float = DEFAULT_OFFER_TIMEOUT_S
    waiting_text: str = DEFAULT_WAITING_TEXT
    logout_timeout_s: float = DEFAULT_LOGOUT_TIMEOUT_S

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, str]]) -> RoutingSettings:
        values = dict(sections.get(ROUTING_SECTION, {}))
        settings = cls()
        known = {"max_chats", "offer_timeout_s", "logout_timeout_s", "waiting_text"}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"[{ROUTING_SECTION}]: unknown option {sorted(unknown)[0]!r}")
        max_chats = settings.max_chats
        if "max_chats" in values:
            text = values["max_chats"].strip()
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"[{ROUTING_SECTION}] max_chats: expected a whole number >= 1")
            max_chats = int(text)
        return cls(
            max_chats,
            seconds_option(ROUTING_SECTION, values, "offer_timeout_s", settings.offer_timeout_s),
            values.get("waiting_text", settings.waiting_text).strip(),
            seconds_option(ROUTING_SECTION, values, "logout_timeout_s", settings.logout_timeout_s),
        )


def seconds_option(section: str, values: dict[str, str], name: str, default: float) -> float:
    """Option `name` of `[section]`: a number of seconds > 0, else `default` when absent."""
    if name not in values:
        return default
    try:
        seconds = float(values[name])
    except ValueError:
        raise ValueError(f"[{section}] {name}: expected a number") from None
    if not seconds > 0:
        raise ValueError(f"[{section}] {name}: expected a number > 0")
    return seconds


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


def revoked_chat_resource(chat_id: str) -> dict[str, Any]:
    """A chat taken back from an agent (it may be gone already: only its id is known)."""
    return {"id": chat_id, "state": REVOKED, "capabilities": []}


def channel_resource(state: str) -> dict[str, Any]:
    return {"channel": "chat", "userState": {"state": state}}


def agent_resource(name: str, state: str, available: bool) -> dict[str, Any]:
    """An agent as other agents see it (transfer targets)."""
    return {"id": name, "userName": name, "state": state, "available": available}
