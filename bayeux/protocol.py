"""The Bayeux wire format: message fields, validation, error strings and advice.

Pure functions and constants, no I/O: everything here can be unit-tested and fuzzed without a
server. Error strings are the ones CometD 8 emits (``402::session_unknown`` and friends),
because clients key on them.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

Message = dict[str, Any]
"""A decoded Bayeux message: a JSON object with a ``channel`` field."""

BAYEUX_VERSION = "1.0"

META_HANDSHAKE = "/meta/handshake"
META_CONNECT = "/meta/connect"
META_SUBSCRIBE = "/meta/subscribe"
META_UNSUBSCRIBE = "/meta/unsubscribe"
META_DISCONNECT = "/meta/disconnect"

LONG_POLLING = "long-polling"
CALLBACK_POLLING = "callback-polling"
WEBSOCKET = "websocket"
CONNECTION_TYPE_ALIASES = {"cross-origin-long-polling": LONG_POLLING}
"""Other clients' names for our transports: Faye's browser client calls its CORS long-polling
`cross-origin-long-polling` (the same POSTs); a handshake offering it may use long-polling."""
ALL_TRANSPORTS = (WEBSOCKET, LONG_POLLING, CALLBACK_POLLING)

RECONNECT_RETRY = "retry"
RECONNECT_HANDSHAKE = "handshake"
RECONNECT_NONE = "none"

# Error strings, as CometD's BayeuxServerImpl emits them ("code:args:message").
SESSION_UNKNOWN = "402::session_unknown"
HANDSHAKE_DENIED = "403::handshake_denied"
HANDSHAKE_FAILED = "403::handshake_failed"
SUBSCRIBE_FAILED = "403::subscribe_failed"
SUBSCRIPTION_MISSING = "403::subscription_missing"
SUBSCRIPTION_INVALID = "403::subscription_invalid"
UNSUBSCRIBE_FAILED = "403::unsubscribe_failed"
CHANNEL_MISSING = "400::channel_missing"
DATA_MISSING = "400::data_missing"
CHANNEL_INVALID = "405::channel_invalid"
MESSAGE_ID_INVALID = "405::message_id_invalid"
CLIENT_ID_INVALID = "405::client_id_invalid"
MESSAGE_DELETED = "404::message_deleted"
CONNECTION_TYPE_UNSUPPORTED = "301::connection_type_unsupported"
VERSION_MISSING = "400::version_missing"
SERVICE_FAILED = "500::service_failed"
SERVICE_UNKNOWN = "404::service_unknown"
ENGINE_UNAVAILABLE = "503::engine_unavailable"


def error(code: int, reason: str, *args: str) -> str:
    """Build a Bayeux error string: ``code:arg1,arg2:reason``."""
    return f"{code}:{','.join(args)}:{reason}"


def denied(operation: str, reason: str | None = None) -> str:
    """CometD's denial string, e.g. ``403:not_logged_in:subscribe_denied``."""
    return f"403:{reason or ''}:{operation}_denied"


class ProtocolError(ValueError):
    """A request that is not Bayeux at all (bad JSON, wrong shape, too big): HTTP 400."""


# Bayeux 1.0 grammar: token chars are alphanumerics plus the marks "-_!~()$@"; CometD also
# accepts "." (dotted service names) and wildcards only as whole trailing segments.
_ID_RE = re.compile(r"^[A-Za-z0-9\-_!~()$@.:]{1,256}$")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9\-_!~()$@.%+=,:]+$")
MAX_CHANNEL_LENGTH = 512
MAX_SEGMENTS = 32


def new_id() -> str:
    """A client or browser id: 128 random bits, alphanumeric, never reused."""
    return secrets.token_hex(16)


def is_valid_id(value: object) -> bool:
    """Message ids may be strings or (as some clients send) integers."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def is_valid_client_id(value: object) -> bool:
    return isinstance(value, str) and _CLIENT_ID_RE.fullmatch(value) is not None


def is_valid_channel(name: object, allow_wildcards: bool = False) -> bool:
    """Check a channel name against the Bayeux grammar.

    Wildcards are legal only as the last segment (``/a/*``, ``/a/**``); ``/**/a`` and
    ``/a/*/b`` are invalid, as in CometD.
    """
    if not isinstance(name, str) or not name.startswith("/") or len(name) > MAX_CHANNEL_LENGTH:
        return False
    segments = name[1:].split("/")
    if len(segments) > MAX_SEGMENTS:
        return False
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment in ("*", "**"):
            if not allow_wildcards or i != last:
                return False
        elif not _SEGMENT_RE.fullmatch(segment) or "*" in segment:
            return False
    return True


def is_meta(channel: str) -> bool:
    return channel.startswith("/meta/")


def is_service(channel: str) -> bool:
    return channel.startswith("/service/") or channel == "/service"


def is_wildcard(channel: str) -> bool:
    return channel.endswith("/*") or channel.endswith("/**")


def decode_batch(body: bytes | str, max_messages: int) -> list[Message]:
    """Decode a request body into a list of messages.

    A batch is a JSON array of objects; a bare object is accepted too (the spec says MAY).
    Raises ProtocolError for anything else, so the transport can answer HTTP 400.
    """
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    return messages_from_json(decoded, max_messages)


def messages_from_json(decoded: object, max_messages: int) -> list[Message]:
    """Validate the outer shape of an already-decoded batch."""
    if isinstance(decoded, dict):
        decoded = [decoded]
    if not isinstance(decoded, list):
        raise ProtocolError("a Bayeux request must be a JSON array of message objects")
    if not decoded:
        raise ProtocolError("a Bayeux request must contain at least one message")
    if len(decoded) > max_messages:
        raise ProtocolError(f"too many messages in one request (limit {max_messages})")
    for message in decoded:
        if not isinstance(message, dict):
            raise ProtocolError("every element of a Bayeux request must be a JSON object")
    return decoded


def reply_to(message: Message, **fields: Any) -> Message:
    """A reply on the message's channel that echoes its id, as the spec requires."""
    reply: Message = {"channel": message.get("channel")}
    if "id" in message:
        reply["id"] = message["id"]
    reply.update(fields)
    return reply


def failure(message: Message, err: str, **fields: Any) -> Message:
    """A ``successful: false`` reply carrying a Bayeux error string."""
    reply = reply_to(message, successful=False, error=err, **fields)
    if "clientId" in message and is_valid_client_id(message["clientId"]):
        reply["clientId"] = message["clientId"]
    return reply


def check_fields(message: Message) -> str | None:
    """Return the Bayeux error for a message whose common fields break the grammar."""
    channel = message.get("channel")
    if channel is None:
        return CHANNEL_MISSING
    if not is_valid_channel(channel):
        return CHANNEL_INVALID
    if "id" in message and not is_valid_id(message["id"]):
        return MESSAGE_ID_INVALID
    client_id = message.get("clientId")
    if client_id is not None and not is_valid_client_id(client_id):
        return CLIENT_ID_INVALID
    return None


def subscriptions_of(message: Message) -> list[str] | None:
    """The ``subscription`` field as a list (it may be a string or an array), or None."""
    value = message.get("subscription")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def client_advice(message: Message) -> dict[str, Any]:
    """The advice a client sent (e.g. ``{"timeout": 0}``), or an empty dict."""
    advice = message.get("advice")
    return advice if isinstance(advice, dict) else {}


def encode(message: Message) -> bytes:
    return orjson.dumps(message)


def encode_batch(parts: list[bytes]) -> bytes:
    """Join already-encoded messages into one JSON array without re-encoding them."""
    return b"[" + b",".join(parts) + b"]"


_JSONP_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,4}$")


def is_valid_jsonp_callback(name: str) -> bool:
    """Only plain JavaScript identifiers (optionally dotted), to prevent script injection."""
    return _JSONP_RE.fullmatch(name) is not None
