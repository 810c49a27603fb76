"""Agent logins: who a `JSESSIONID` cookie belongs to, and its CSRF token.

A login lasts `[agent-api] session_timeout_s` after its last use (every request that
carries the cookie uses it). The memory store serves one node; with `--redis` logins live in
Redis, so an agent whose node died carries on on another node with the same cookie and CSRF
token.

Redis keys (this module is the only place that knows them):

* `<prefix>:agent-login:<token>`, a hash: `name` (the agent) and `csrf`, expiring;
* `<prefix>:agent-logins:<name>`, a sorted set of the agent's tokens (score: when each
  expires, ms), so that logging out ends every login of the agent; it lives as long as the
  agent's longest-lived login.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from bayeux.redis_client import open_redis

from .store import Recent, redis_failures

MAX_TOKEN_LENGTH = 64
"""Longer cookie values are no token of ours: refused without looking them up."""
RECHECK_S = 1.0
"""How long a node trusts a login it has just looked up in Redis: a desk sends a few requests
a second, and a logout elsewhere takes effect here within this time."""
MAX_CHECKED = 10_000


@dataclass(frozen=True)
class AgentLogin:
    """One agent login: the session cookie's token, the agent, and its CSRF token."""

    token: str
    name: str
    csrf: str

    @classmethod
    def new(cls, name: str) -> AgentLogin:
        return cls(secrets.token_urlsafe(32), name, secrets.token_urlsafe(24))


class LoginStore(ABC):
    """Where agent logins live; each expires `timeout_s` after its last use."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    async def close(self) -> None:
        return None

    @abstractmethod
    async def add(self, login: AgentLogin) -> None:
        """Keep a new login."""

    async def find(self, token: str | None) -> AgentLogin | None:
        """The login a cookie names, its expiry pushed back; None if there is none (any
        more)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        return await self._use(token)

    @abstractmethod
    async def _use(self, token: str) -> AgentLogin | None:
        """`find` for a plausible token."""

    @abstractmethod
    async def remove_agent(self, name: str) -> None:
        """End every login of the agent: its cookies and CSRF tokens stop working."""


class MemoryLoginStore(LoginStore):
    """One node's logins, oldest use first (so expired ones are dropped from the front)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self._logins: OrderedDict[str, tuple[AgentLogin, float]] = OrderedDict()

    async def add(self, login: AgentLogin) -> None:
        self._drop_expired()
        self._logins[login.token] = (login, time.monotonic() + self.timeout_s)

    async def _use(self, token: str) -> AgentLogin | None:
        self._drop_expired()
        entry = self._logins.get(token)
        if entry is None:
            return None
        self._logins[token] = (entry[0], time.monotonic() + self.timeout_s)
        self._logins.move_to_end(token)
        return entry[0]

    async def remove_agent(self, name: str) -> None:
        for token in [t for t, (login, _) in self._logins.items() if login.name == name]:
            del self._logins[token]

    def _drop_expired(self) -> None:
        now = time.monotonic()
        while self._logins:
            token, (_, expires) = next(iter(self._logins.items()))
            if expires > now:
                return
            del self._logins[token]


# The agent's index lives as long as its longest-lived login (PEXPIRE's GT needs Redis 7).
_KEEP_INDEX = """
local function keep(index, token, now, ttl)
  redis.call('ZADD', index, now + ttl, token)
  if redis.call('PTTL', index) < ttl then redis.call('PEXPIRE', index, ttl) end
end
"""

# KEYS: the login hash, the agent's index. ARGV: name, csrf, timeout ms, now ms, the token.
_ADD = (
    _KEEP_INDEX
    + """
local ttl, now = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'csrf', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
keep(KEYS[2], ARGV[5], now, ttl)
return 1
"""
)

# KEYS: the login hash. ARGV: timeout ms, now ms, the agents' index key prefix, the token.
_USE = (
    _KEEP_INDEX
    + """
local login = redis.call('HMGET', KEYS[1], 'name', 'csrf')
if not login[1] then return false end
local ttl = tonumber(ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
keep(ARGV[3] .. login[1], ARGV[4], tonumber(ARGV[2]), ttl)
return login
"""
)

# KEYS: the agent's index. ARGV: the login hash key prefix.
_REMOVE_AGENT = """
local tokens = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, token in ipairs(tokens) do redis.call('DEL', ARGV[1] .. token) end
redis.call('DEL', KEYS[1])
return #tokens
"""


class RedisLoginStore(LoginStore):
    """Logins shared by every node of a cluster."""

    def __init__(self, url: str, timeout_s: float, prefix: str = "gms") -> None:
        super().__init__(timeout_s)
        self.prefix = prefix
        self._redis: aioredis.Redis = open_redis(url)
        self._add = self._redis.register_script(_ADD)
        self._use_script = self._redis.register_script(_USE)
        self._remove_agent = self._redis.register_script(_REMOVE_AGENT)
        self._checked = Recent[tuple[AgentLogin, float]](MAX_CHECKED)
        """token -> (login, when Redis last confirmed it), oldest first."""

    def login_key(self, token: str) -> str:
        return f"{self.prefix}:agent-login:{token}"

    def index_key(self, name: str) -> str:
        return f"{self.prefix}:agent-logins:{name}"

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def add(self, login: AgentLogin) -> None:
        keys = [self.login_key(login.token), self.index_key(login.name)]
        args: list[str | int] = [login.name, login.csrf, self._ttl_ms(), _now_ms(), login.token]
        with redis_failures():
            await self._add(keys=keys, args=args)

    async def _use(self, token: str) -> AgentLogin | None:
        checked = self._checked.get(token)
        if checked is not None and time.monotonic() - checked[1] < RECHECK_S:
            return checked[0]
        args: list[str | int] = [self._ttl_ms(), _now_ms(), self.index_key(""), token]
        with redis_failures():
            found = await self._use_script(keys=[self.login_key(token)], args=args)
        self._checked.drop(token)
        if not found:
            return None
        name, csrf = (value.decode() if isinstance(value, bytes) else value for value in found)
        login = AgentLogin(token, name, csrf)
        self._checked.put(token, (login, time.monotonic()))
        return login

    async def remove_agent(self, name: str) -> None:
        self._checked.drop_where(lambda checked: checked[0].name == name)
        keys = [self.index_key(name)]
        with redis_failures():
            await self._remove_agent(keys=keys, args=[self.login_key("")])

    def _ttl_ms(self) -> int:
        return max(1, round(self.timeout_s * 1000))


def _now_ms() -> int:
    return int(time.time() * 1000)
