"""The chat domain: parties, transcript events and chat sessions, as plain data.

Wire shapes follow GMS Chat API v2 (`from`, `index`, `type`, `utcTime`, `text`, ...). Records
are JSON-able dicts so that every store (memory, Redis) keeps the same thing.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

CLIENT = "Client"
AGENT = "Agent"
EXTERNAL = "External"

# Transcript event types (GMS API Responses, "Transcript" resource).
PARTICIPANT_JOINED = "ParticipantJoined"
PARTICIPANT_LEFT = "ParticipantLeft"
MESSAGE = "Message"
TYPING_STARTED = "TypingStarted"
TYPING_STOPPED = "TypingStopped"
NICKNAME_UPDATED = "NicknameUpdated"
PUSH_URL = "PushUrl"
FILE_UPLOADED = "FileUploaded"
FILE_DELETED = "FileDeleted"
CUSTOM_NOTICE = "CustomNotice"
NOTICE = "Notice"
IDLE_ALERT = "IdleAlert"
IDLE_CLOSE = "IdleClose"

# Session states.
QUEUED = "queued"
ACTIVE = "active"
ON_HOLD = "on-hold"
TRANSFERRING = "transferring"
ENDED = "ended"

HOLD = "HOLD"
TRANSFER = "TRANSFER"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def chat_id() -> str:
    """16 characters [0-9A-Za-z], as GMS chat ids look."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(16))


def user_id() -> str:
    """16 uppercase hex characters."""
    return secrets.token_hex(8).upper()


def secure_key() -> str:
    """128 random bits: the only credential a CometD chat client holds."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Party:
    nickname: str
    participant_id: int
    type: str

    def to_wire(self) -> dict[str, Any]:
        return {"nickname": self.nickname, "participantId": self.participant_id, "type": self.type}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Party:
        return cls(data["nickname"], int(data["participantId"]), data["type"])


@dataclass(slots=True)
class Event:
    """One transcript event. `index` is assigned when the event is committed."""

    type: str
    party: Party
    utc_time: int
    index: int = 0
    text: str | None = None
    message_type: str | None = None
    user_data: dict[str, str] | None = None
    event_attributes: dict[str, Any] | None = None
    visible: bool = True

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "from": self.party.to_wire(),
            "index": self.index,
            "type": self.type,
            "utcTime": self.utc_time,
        }
        if self.text is not None:
            wire["text"] = self.text
        if self.type == MESSAGE:
            wire["messageType"] = self.message_type
        if self.user_data is not None:
            wire["userData"] = self.user_data
        if self.event_attributes:
            wire["eventAttributes"] = self.event_attributes
        return wire

    def to_record(self) -> dict[str, Any]:
        record = self.to_wire()
        if not self.visible:
            record["hidden"] = True
        if self.message_type is not None:
            record["messageType"] = self.message_type
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        return cls(
            type=record["type"],
            party=Party.from_wire(record["from"]),
            utc_time=record["utcTime"],
            index=record["index"],
            text=record.get("text"),
            message_type=record.get("messageType"),
            user_data=record.get("userData"),
            event_attributes=record.get("eventAttributes"),
            visible=not record.get("hidden", False),
        )


@dataclass
class Binding:
    """The CometD client that receives a chat's notifications, and the node it is on."""

    client_id: str
    node: str


@dataclass
class ChatSession:
    """Everything about one chat except its transcript."""

    chat_id: str
    service: str
    secure_key: str
    user_id: str
    alias: str
    client: Party
    created: int
    origin: str
    """How the chat was created: `rest` or `cometd` (push needs `cometd`)."""
    subject: str | None = None
    email: str | None = None
    user_data: dict[str, str] = field(default_factory=dict)
    state: str = QUEUED
    end_reason: str | None = None
    ended_at: int | None = None
    client_left: bool = False
    agents: dict[str, Party] = field(default_factory=dict)
    """Agents currently in the chat, by agent id."""
    external: Party | None = None
    next_participant_id: int = 2
    last_index: int = 0
    read_mark: int = 0
    last_message_at: int = 0
    binding: Binding | None = None
    push: dict[str, str] | None = None
    previous_secure_key: str | None = None
    rotated_at: int | None = None
    version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Room for features that keep per-chat state (files, for instance)."""

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    @property
    def next_position(self) -> int:
        """What a client sends back as `transcriptPosition`; 1 once the chat has ended."""
        return 1 if self.ended else self.last_index + 1

    def new_party(self, nickname: str, kind: str) -> Party:
        party = Party(nickname, self.next_participant_id, kind)
        self.next_participant_id += 1
        return party

    def to_record(self) -> dict[str, Any]:
        """A JSON-able copy sharing nothing mutable with the session (the engine compares
        it with the session after a change). Written out rather than `dataclasses.asdict`,
        which costs several times more and runs twice per chat event."""
        binding = self.binding
        return {
            "chat_id": self.chat_id,
            "service": self.service,
            "secure_key": self.secure_key,
            "user_id": self.user_id,
            "alias": self.alias,
            "client": self.client.to_wire(),
            "created": self.created,
            "origin": self.origin,
            "subject": self.subject,
            "email": self.email,
            "user_data": dict(self.user_data),
            "state": self.state,
            "end_reason": self.end_reason,
            "ended_at": self.ended_at,
            "client_left": self.client_left,
            "agents": {k: p.to_wire() for k, p in self.agents.items()},
            "external": self.external.to_wire() if self.external else None,
            "next_participant_id": self.next_participant_id,
            "last_index": self.last_index,
            "read_mark": self.read_mark,
            "last_message_at": self.last_message_at,
            "binding": {"client_id": binding.client_id, "node": binding.node} if binding else None,
            "push": dict(self.push) if self.push is not None else None,
            "previous_secure_key": self.previous_secure_key,
            "rotated_at": self.rotated_at,
            "version": self.version,
            "extra": _copied(self.extra),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ChatSession:
        values = dict(record)
        values["client"] = Party.from_wire(values["client"])
        values["agents"] = {k: Party.from_wire(p) for k, p in values["agents"].items()}
        values["external"] = Party.from_wire(values["external"]) if values["external"] else None
        values["binding"] = Binding(**values["binding"]) if values["binding"] else None
        return cls(**values)


def _copied(value: Any) -> Any:
    """A deep copy of JSON-able data (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(v) for v in value)
    return value
