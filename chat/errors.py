"""GMS API errors: the documented codes, and how each maps to a response.

REST validation failures are HTTP 400 `{"errors":[...]}` (all of them at once); session-level
failures are HTTP 200 with `statusCode` 2 (or 1 when retrying may help). CometD clients get
the same codes inside an error notification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Missing or invalid parameters (HTTP 400).
ALIAS_MISSING = 151
USER_ID_MISSING = 152
SECURE_KEY_MISSING = 153
CHAT_ID_MISSING = 154
FIRST_NAME_MISSING = 102
LAST_NAME_MISSING = 103
SUBJECT_MISSING = 104
USER_DATA_MISSING = 105
NICKNAME_MISSING = 161
MESSAGE_MISSING = 162
PUSH_URL_MISSING = 163
EMAIL_INVALID = 364
# Extension codes for inputs GMS's table does not cover (spec-chat-v2 §1.7).
TRANSCRIPT_POSITION_MISSING = 164
FILE_MISSING = 165
FILE_ID_MISSING = 166
OPERATION_MISSING = 167
OPERATION_UNKNOWN = 307
TRANSCRIPT_POSITION_INVALID = 308
AUTH_INVALID = 310
CHAT_ALREADY_BOUND = 311
# Files.
TOO_MANY_FILES = 201
FILES_TOO_LARGE = 202
FILE_TYPE_NOT_ALLOWED = 203
FILE_NOT_FOUND = 241
AGENT_NOT_JOINED = 261
FILE_ALREADY_DELETED = 264
# Service and session.
SERVICE_UNKNOWN = 306
INTERNAL_ERROR = 240
SESSION_NOT_FOUND = 249


@dataclass(frozen=True)
class ErrorCode:
    code: int
    advice: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code}
        if self.advice is not None:
            wire["advice"] = self.advice
        return wire


@dataclass
class ChatError(Exception):
    """A failed chat operation.

    `http` is 400 (validation) or 404 (unknown service) for REST, 200 otherwise;
    `status` is the `statusCode` of a 200 reply (2 final, 1 transient).
    """

    errors: list[ErrorCode]
    http: int = 200
    status: int = 2
    chat_ended: bool | None = None
    secure_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return ", ".join(str(e.code) for e in self.errors)

    @property
    def codes(self) -> list[int]:
        return [e.code for e in self.errors]


def invalid(*codes: int | ErrorCode) -> ChatError:
    """Validation failure(s): HTTP 400 with every code."""
    return ChatError([c if isinstance(c, ErrorCode) else ErrorCode(c) for c in codes], http=400)


def session_not_found() -> ChatError:
    return ChatError(
        [ErrorCode(SESSION_NOT_FOUND, "chat session not found")], status=2, chat_ended=True
    )


def service_unknown(name: str) -> ChatError:
    return ChatError([ErrorCode(SERVICE_UNKNOWN, f"unknown service {name}")], http=404)


def transient(reference: str) -> ChatError:
    """Retrying may succeed (a store or node unavailable)."""
    return ChatError([ErrorCode(INTERNAL_ERROR, reference)], status=1)
