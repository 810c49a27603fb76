"""GMS localization file: the texts of `localizestring` notifications, per language.

The file (`[push] localization_file`) is XML:

    <messages>
      <message id="welcomeArgs">
        <locale language="de"><entry key="text">Sehr geehrter Kunde $customer.lastname,
    wie können Sie daran erinnert werden</entry></locale>
      </message>
    </messages>

A publish with `mediaType: localizestring` carries a message id in `message` and arguments in
`locArgs` (flat `{"customer.lastname": "Doe"}` or nested `{"customer": {"lastname": "Doe"}}`);
each subscription gets the text in its own `language`:

1. the locale is the exact language (case-insensitive, `-` read as `_`), else its language
   part (`de_DE` -> `de`), else `[push] default_language` (default `en_US`); with none of
   them, or an unknown message id, the message id itself is sent;
2. `\\uXXXX` escapes are decoded; a line break and the indentation around it become one space;
3. `$dotted.name` is replaced by the value of the longest argument key it starts with;
   unknown `$tokens` stay as they are.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LANGUAGE = "en_US"
TEXT_KEY = "text"
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")
_TOKEN = re.compile(r"\$([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)")


def normalise_language(language: str) -> str:
    """`de-DE`, `DE_de` -> `de_de`: how locales are compared."""
    return language.strip().replace("-", "_").lower()


@dataclass
class Localizer:
    """The messages of one localization file: message id -> language -> entry key -> text."""

    messages: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    default_language: str = DEFAULT_LANGUAGE

    @classmethod
    def from_sections(cls, sections: Mapping[str, Mapping[str, str]]) -> Localizer:
        """The file `[push] localization_file` names (none: no messages, ids are sent as is)."""
        push = sections.get("push", {})
        default = push.get("default_language", DEFAULT_LANGUAGE).strip() or DEFAULT_LANGUAGE
        path = push.get("localization_file", "").strip()
        if not path:
            return cls(default_language=default)
        return cls.load(path, default)

    @classmethod
    def load(cls, path: str | Path, default_language: str = DEFAULT_LANGUAGE) -> Localizer:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"[push] localization_file {str(path)!r}: {exc}") from exc
        try:
            return cls.parse(text, default_language)
        except ElementTree.ParseError as exc:
            raise ValueError(f"[push] localization_file {str(path)!r}: {exc}") from exc

    @classmethod
    def parse(cls, text: str, default_language: str = DEFAULT_LANGUAGE) -> Localizer:
        root = ElementTree.fromstring(text)
        messages: dict[str, dict[str, dict[str, str]]] = {}
        for message in root.iter("message"):
            message_id = message.get("id")
            if not message_id:
                continue
            locales = messages.setdefault(message_id, {})
            for locale in message.iter("locale"):
                language = locale.get("language")
                if not language:
                    continue
                entries = locales.setdefault(normalise_language(language), {})
                for entry in locale.iter("entry"):
                    entries[entry.get("key", TEXT_KEY)] = entry.text or ""
        return cls(messages, default_language)

    def localize(
        self,
        message_id: str,
        language: str | None,
        loc_args: Mapping[str, Any] | None = None,
        key: str = TEXT_KEY,
    ) -> str:
        """The text of `message_id` in `language` with its arguments, or the id itself."""
        entries = self.entries(message_id, language)
        if entries is None or key not in entries:
            return message_id
        return render(entries[key], flatten(loc_args or {}))

    def entries(self, message_id: str, language: str | None) -> dict[str, str] | None:
        locales = self.messages.get(message_id)
        if not locales:
            return None
        for candidate in _candidates(language, self.default_language):
            if candidate in locales:
                return locales[candidate]
        return None


def _candidates(language: str | None, default: str) -> list[str]:
    """Exact, then the language part, then the default language (and its language part)."""
    names: list[str] = []
    for raw in (language, default):
        if not raw:
            continue
        exact = normalise_language(raw)
        names += [exact, exact.split("_")[0]]
    return list(dict.fromkeys(names))


def flatten(args: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"customer": {"lastname": "Doe"}}` -> `{"customer.lastname": "Doe"}`."""
    flat: dict[str, str] = {}
    for name, value in args.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        elif isinstance(value, str):
            flat[dotted] = value
        elif value is None:
            flat[dotted] = ""
        elif isinstance(value, bool):
            flat[dotted] = "true" if value else "false"
        else:
            flat[dotted] = str(value)
    return flat


def render(text: str, args: Mapping[str, str]) -> str:
    """Decode escapes, fold line breaks, substitute `$tokens`."""
    text = decode_escapes(text)
    text = _LINE_BREAK.sub(" ", text).strip()

    def substitute(match: re.Match[str]) -> str:
        parts = match.group(1).split(".")
        for end in range(len(parts), 0, -1):
            name = ".".join(parts[:end])
            if name in args:
                rest = parts[end:]
                return args[name] + "".join("." + part for part in rest)
        return match.group(0)

    return _TOKEN.sub(substitute, text)


def decode_escapes(text: str) -> str:
    """Java-style `\\u00A1` escapes (surrogate pairs included) -> characters."""
    if "\\u" not in text:
        return text
    decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
