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
FILE_OPTION_PREFIX = "file."
"""`file.<gms-name>` options (`file.upload-max-files`, ...) set `FileOptions` fields."""
TRUE_WORDS = ("true", "yes", "1")
BOOLEAN_WORDS = (*TRUE_WORDS, "false", "no", "0")


def truthy(text: str) -> bool:
    """GMS's boolean-like option values: true, yes or 1 (any case); anything else is false."""
    return text.strip().lower() in TRUE_WORDS


@dataclass(frozen=True)
class FileOptions:
    """The `file.*` options of a chat service (spec-chat-v2 §4.1, §4.6).

    Values stay the configured strings, because limits replies echo them verbatim; the
    properties give their meaning.
    """

    download_attempts: str = "10"
    upload_max_files: str = "10"
    upload_max_file_size: str = "2097152"
    upload_max_total_size: str = "5242880"
    upload_need_agent: str = "true"
    upload_file_types: str = "bmp:csv:doc:docx:gif:jpg:pdf:png:ppt:pptx:tif:txt:xls:xlsx"
    delete_file: str = "false"
    """Boolean-like: whether a delete gives the upload slot and bytes back (any other value,
    such as GMS's sample `odd`, means no)."""
    client_delete_allowed: str = "true"

    def __post_init__(self) -> None:
        for name in (
            "download_attempts",
            "upload_max_files",
            "upload_max_file_size",
            "upload_max_total_size",
        ):
            if not getattr(self, name).strip().isdigit():
                raise ValueError(f"{_gms_name(name)}: expected a whole number of at least 0")
        for name in ("upload_need_agent", "client_delete_allowed"):
            if getattr(self, name).strip().lower() not in BOOLEAN_WORDS:
                raise ValueError(f"{_gms_name(name)}: expected true or false")

    @property
    def max_downloads(self) -> int:
        """Client downloads allowed per file."""
        return int(self.download_attempts)

    @property
    def max_files(self) -> int:
        return int(self.upload_max_files)

    @property
    def max_file_size(self) -> int:
        return int(self.upload_max_file_size)

    @property
    def max_total_size(self) -> int:
        return int(self.upload_max_total_size)

    @property
    def need_agent(self) -> bool:
        return truthy(self.upload_need_agent)

    @property
    def file_types(self) -> list[str]:
        """The allowed extensions, lower-case, in the configured order."""
        return [t.strip().lower() for t in self.upload_file_types.split(":") if t.strip()]

    @property
    def delete_frees_slot(self) -> bool:
        return truthy(self.delete_file)

    @property
    def client_may_delete(self) -> bool:
        return truthy(self.client_delete_allowed)


FILE_OPTIONS = frozenset(f.name for f in dataclasses.fields(FileOptions))


def _gms_name(field_name: str) -> str:
    return FILE_OPTION_PREFIX + field_name.replace("_", "-")


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
    file_options: dict[str, str] = field(default_factory=dict)
    """`file.*` values overriding the `[chat]` ones, by `FileOptions` field name."""


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
    enable_fast_chat_transcript_refresh: bool = False
    """Chat v1: each `transcriptToShow` row ends with the event's index, and REST replies
    carry the transcript in comet mode too (`enable-fast-chat-transcript-refresh`)."""
    cors_allowed_origins: tuple[str, ...] = ("*",)
    """Sites whose pages may call the chat API (`*`: any; the origin is echoed)."""
    alias: str = "117"
    """This deployment's alias, returned to REST clients (any value is accepted back)."""
    file_options: dict[str, str] = field(default_factory=dict)
    """`file.*` values for every service, by `FileOptions` field name."""
    file_store_dir: str | None = None
    """Where the disk file store keeps uploads (default: a new directory under the OS temp
    directory, removed at shutdown). Unused with `--redis`, where Redis keeps them."""
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    """Every other section of the file, verbatim: `[push]`, `[push.provider.<P>...]`,
    credential sections they reference, and those of other features."""

    def service(self, name: str) -> ServiceConfig | None:
        return self.services.get(name)

    def files(self, service: str) -> FileOptions:
        """The service's `file.*` options: its own over the `[chat]` ones over the defaults."""
        config = self.services.get(service)
        overrides = config.file_options if config is not None else {}
        return FileOptions(**{**self.file_options, **overrides})

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


_NOT_OPTIONS = ("services", "name", "credentials", "sections", "file_options")


def _apply(target: ChatConfig | ServiceConfig, values: dict[str, str], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, raw in values.items():
        if key.startswith(FILE_OPTION_PREFIX):
            _apply_file_option(target.file_options, key, raw, where)
            continue
        name = key.replace("-", "_")  # GMS spells some options with hyphens
        known = fields.get(name)
        if known is None or name in _NOT_OPTIONS:
            raise ValueError(f"{where}: unknown option {key!r}")
        setattr(target, name, _convert(getattr(target, name), raw, f"{where} {key}"))


def _apply_file_option(options: dict[str, str], key: str, raw: str, where: str) -> None:
    """`file.upload-max-files = 3` sets `upload_max_files`; values are checked at once."""
    name = key[len(FILE_OPTION_PREFIX) :].replace("-", "_")
    if name not in FILE_OPTIONS or _gms_name(name) != key:
        raise ValueError(f"{where}: unknown option {key!r}")
    options[name] = raw.strip()
    try:
        FileOptions(**options)
    except ValueError as exc:
        raise ValueError(f"{where} {exc}") from None


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
