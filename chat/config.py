"""Chat configuration, in GMS's own shape: a `[chat]` section and one `[chat.<service>]`
section per chat service, in an INI file (`gms-server --config FILE`).

Without a file there is one service, `customer-support`, with GMS's defaults.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auth import parse_credentials

DEFAULT_SERVICE = "customer-support"
SERVICE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass
class ServiceConfig:
    """`[chat.<service>]`: one chat service."""

    name: str
    endpoint: str | None = None
    typing_preview: bool = False
    tenant: str | None = None
    subject_required: bool = False
    basic_auth: bool = False
    credentials: dict[str, str] = field(default_factory=dict)
    """user -> password hash (see chat/passwords.py), for services with `basic_auth`."""
    idle_alert_timeout_s: float = 0
    idle_close_timeout_s: float = 0
    idle_alert_text: str = "Are you still there?"
    idle_close_text: str = "The chat was closed for inactivity."
    rest_client_timeout_s: float = 0
    push_notification_to_active_client: bool | None = None
    """None: use the `[chat]` value."""


@dataclass
class ChatConfig:
    """`[chat]`: options for every service."""

    services: dict[str, ServiceConfig] = field(
        default_factory=lambda: {DEFAULT_SERVICE: ServiceConfig(DEFAULT_SERVICE)}
    )
    enable_notification_mode: bool = True
    ended_session_retention_s: float = 300
    secure_key_grace_s: float = 30
    cometd_legacy_ids: str = "bogus"
    cometd_echo_channel_in_data: bool = False
    cometd_allow_new_chat_after_end: bool = False
    utc_time_resolution: str = "s"
    push_notification_to_active_client: bool = False
    cors_allowed_origins: tuple[str, ...] = ("*",)
    """Sites whose pages may call the chat API (`*`: any; the origin is echoed)."""
    alias: str = "117"
    """This deployment's alias, returned to REST clients (any value is accepted back)."""
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    """Every other section of the file, verbatim: `[push]`, `[push.provider.<P>...]`,
    credential sections they reference, and those of other features."""

    def service(self, name: str) -> ServiceConfig | None:
        return self.services.get(name)

    def push_to_active_client(self, service: str) -> bool:
        config = self.services.get(service)
        if config is not None and config.push_notification_to_active_client is not None:
            return config.push_notification_to_active_client
        return self.push_notification_to_active_client


def load_config(path: str | Path | None) -> ChatConfig:
    """Read an INI file; unknown options are an error, so typos do not pass silently."""
    if path is None:
        return ChatConfig()
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep option case
    with open(path, encoding="utf-8") as handle:
        parser.read_file(handle)
    config = ChatConfig(services={})
    if parser.has_section("chat"):
        _apply(config, dict(parser["chat"]), "[chat]")
    for section in parser.sections():
        if not section.startswith("chat."):
            if section != "chat":
                config.sections[section] = dict(parser[section])
            continue
        name = section[len("chat.") :]
        if not SERVICE_NAME.match(name):
            raise ValueError(f"[{section}]: a service name is letters, digits, '.', '_', '-'")
        service = ServiceConfig(name)
        values = dict(parser[section])
        credentials = values.pop("credentials", "")
        service.credentials = parse_credentials(credentials, f"[{section}]")
        _apply(service, values, f"[{section}]")
        config.services[name] = service
    if not config.services:
        config.services[DEFAULT_SERVICE] = ServiceConfig(DEFAULT_SERVICE)
    return config


def _apply(target: Any, values: dict[str, str], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, raw in values.items():
        known = fields.get(key)
        if known is None or key in ("services", "name", "credentials", "sections"):
            raise ValueError(f"{where}: unknown option {key!r}")
        setattr(target, key, _convert(getattr(target, key), raw, f"{where} {key}"))


def _convert(current: Any, raw: str, where: str) -> Any:
    text = raw.strip()
    if isinstance(current, bool) or (current is None and text.lower() in ("true", "false")):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{where}: expected true or false, got {raw!r}")
        return text.lower() in ("true", "1", "yes")
    if isinstance(current, tuple):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if isinstance(current, (int, float)):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {raw!r}") from None
    return text
