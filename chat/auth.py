"""HTTP Basic authentication for GMS APIs (`[auth]` section), with hashed credentials.

`[auth]` holds `credentials` (`user:<hash>` entries, see chat/passwords.py) and one flag per
API: `node` (default true: GMS always protects the Node API), `storage`, `notification`,
`service` (default false: "depends on the configuration").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import secrets

from aiohttp import web

from .passwords import is_hash, verify_password

DEFAULT_PROTECTED = {"node": True, "storage": False, "notification": False, "service": False}


class BasicAuth:
    """Checks `Authorization: Basic` against password hashes.

    PBKDF2 is slow on purpose and REST clients send credentials with every request, so checks
    run off the event loop and a success is remembered as a keyed digest (useless outside
    this process), never as the password.
    """

    MAX_REMEMBERED = 4096

    def __init__(self, credentials: dict[str, str], realm: str = "GMS") -> None:
        self.credentials = credentials
        self.realm = realm
        self._key = secrets.token_bytes(32)
        self._verified: set[bytes] = set()

    @classmethod
    def from_section(cls, section: dict[str, str]) -> BasicAuth:
        return cls(parse_credentials(section.get("credentials", "")))

    async def user(self, request: web.Request) -> str | None:
        """The authenticated user, or None (missing, malformed or wrong credentials)."""
        decoded = decode_basic(request.headers.get("Authorization", ""))
        if decoded is None:
            return None
        user, password = decoded
        return user if await self.verify(user, password) else None

    async def verify(self, user: str, password: str) -> bool:
        hashed = self.credentials.get(user)
        if hashed is None:
            return False
        token = hmac.digest(self._key, f"{hashed}\0{password}".encode(), "sha256")
        if token in self._verified:
            return True
        if not await asyncio.to_thread(verify_password, password, hashed):
            return False
        if len(self._verified) >= self.MAX_REMEMBERED:
            self._verified.clear()
        self._verified.add(token)
        return True

    async def require(self, request: web.Request) -> str:
        """The authenticated user; raises 401 with a Basic challenge otherwise."""
        user = await self.user(request)
        if user is None:
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": self.challenge},
                text='{"message":"Unauthorized"}',
                content_type="application/json",
            )
        return user

    @property
    def challenge(self) -> str:
        return f'Basic realm="{self.realm}"'


def protected(section: dict[str, str], api: str) -> bool:
    value = section.get(api)
    if value is None:
        return DEFAULT_PROTECTED.get(api, False)
    return value.strip().lower() in ("true", "1", "yes")


def decode_basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    return decode_user_password(value.strip())


def decode_user_password(encoded: str) -> tuple[str, str] | None:
    """`base64(user:password)` -> (user, password), or None if malformed."""
    try:
        text = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def parse_credentials(raw: str, where: str = "[auth]") -> dict[str, str]:
    """`user:<password hash>` entries, one per line or comma-separated: hashes, never clear."""
    credentials: dict[str, str] = {}
    for entry in re.split(r"[,\n]", raw):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, hashed = entry.partition(":")
        if not sep or not is_hash(hashed):
            raise ValueError(f"{where} credentials: expected user:<hash from hash-password>")
        credentials[user] = hashed
    return credentials
