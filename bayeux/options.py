"""Server options, named after CometD's configuration parameters (snake_case).

Every limit that protects the server from a client is here, with the reason for its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .protocol import ALL_TRANSPORTS


@dataclass
class BayeuxOptions:
    # Timing (milliseconds), as CometD.
    timeout: int = 30_000
    """How long a /meta/connect is held before an empty reply."""
    interval: int = 0
    """Advised pause between the end of one /meta/connect and the next."""
    max_interval: int = 10_000
    """A session with no /meta/connect for this long after the last one ended is removed."""
    sweep_period: int = 1_000
    """How often expired sessions are looked for."""
    handshake_reconnect: bool = False
    """Add maxInterval to the advice, for clients that re-handshake on their own."""

    # Transports.
    allowed_transports: tuple[str, ...] = ALL_TRANSPORTS
    broadcast_to_publisher: bool = True
    meta_connect_deliver_only: bool = False
    """Deliver only in /meta/connect replies: strict ordering at some latency cost."""
    duplicate_meta_connect_http_response_code: int = 500
    """HTTP status that answers a held /meta/connect superseded by a newer one."""

    # The BAYEUX_BROWSER cookie.
    browser_cookie_name: str = "BAYEUX_BROWSER"
    browser_cookie_domain: str | None = None
    browser_cookie_path: str = "/"
    browser_cookie_max_age: int = -1
    browser_cookie_secure: bool = False
    browser_cookie_http_only: bool = True
    browser_cookie_same_site: str | None = None
    browser_cookie_partitioned: bool = False
    trust_client_session: bool = False
    """Accept a clientId over HTTP without the matching browser cookie (third-party-cookie
    blocking breaks cross-domain widgets; CometD has the same switch)."""
    max_sessions_per_browser: int = 1
    """Held long-polls per browser before `multiple-clients` advice (HTTP/1.1 limit)."""
    multi_session_interval: int = 2_000

    allowed_origins: tuple[str, ...] = ()
    """Origins allowed to call from other sites (CORS, and the websocket Origin check);
    `*` allows any. Empty: same-origin pages only, websocket from anywhere (as CometD)."""

    # Limits that keep a hostile or broken client from hurting the server.
    max_message_size: int = 1_048_576
    """Largest HTTP body or websocket frame accepted, in bytes."""
    max_batch: int = 1_000
    """Most messages in one request."""
    max_queue: int = 10_000
    """Most messages queued for one session (a slow consumer)."""
    slow_consumer_policy: str = "disconnect"
    """When a queue is full: `disconnect` the session (the client re-handshakes and resumes
    from its replay position), or `drop-oldest` messages."""
    max_subscriptions: int = 1_000
    """Most subscriptions per session."""
    max_sessions: int = 200_000
    """Most sessions in this process: past it handshakes are refused with advice to retry."""
    ws_write_buffer_limit: int = 4 * 1_048_576
    """Bytes buffered for one websocket before it is treated as a slow consumer."""

    handover_ttl: int = 60_000
    """How long (ms) sessions saved at shutdown wait for their clients to come back."""
    handover_spread: int = 2_000
    """Upper bound (ms) of the random interval advised to clients of a node shutting down."""

    # Durable channels (the replay extension).
    replay_channels: tuple[str, ...] = ()
    """Channels (or wildcard patterns) whose messages get replay ids and are retained."""
    replay_max_length: int = 10_000
    """Most events retained per durable channel."""
    replay_max_age: int = 86_400_000
    """How long events are retained (ms); Salesforce keeps 24 h."""

    # Validation and extras.
    validate_message_fields: bool = True
    allow_message_delivery_during_handshake: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form options for applications and extensions."""

    def __post_init__(self) -> None:
        unknown = set(self.allowed_transports) - set(ALL_TRANSPORTS)
        if unknown:
            raise ValueError(f"unknown transports: {sorted(unknown)}")
        if self.slow_consumer_policy not in ("disconnect", "drop-oldest"):
            raise ValueError("slow_consumer_policy must be 'disconnect' or 'drop-oldest'")
        if self.duplicate_meta_connect_http_response_code < 400:
            raise ValueError("duplicate_meta_connect_http_response_code must be >= 400")

    @classmethod
    def from_pairs(cls, pairs: list[str]) -> BayeuxOptions:
        """Build options from `key=value` pairs, as given to `--option` on a command line."""
        values: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"expected key=value, got {pair!r}")
            values[key.strip()] = value.strip()
        return cls.from_strings(values)

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> BayeuxOptions:
        """Build options from `key=value` strings (command line, environment)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        parsed: dict[str, Any] = {}
        for key, raw in values.items():
            name = key.replace("-", "_").replace(".", "_")
            if name not in fields or name == "extra":
                raise ValueError(f"unknown option {key!r}")
            parsed[name] = _parse_value(fields[name].default, raw)
        return cls(**parsed)


def _parse_value(default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if raw.lower() in ("", "none", "null"):
        return None
    return raw
