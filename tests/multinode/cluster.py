"""A real cluster for the multi-node tests: redis-server, three Bayeux nodes and HAProxy.

HAProxy runs the shipped docker/haproxy.cfg unchanged: the file takes the node addresses and
its bind addresses from the environment (NODE1_ADDR..., LB_BIND, STATS_BIND), which the
harness points at loopback ports. Readiness is always an explicit signal: a node's `/health`,
HAProxy's stats page (`/stats;csv`) showing each server UP or DOWN.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from tests.support.processes import (
    LOOPBACK,
    REPO_ROOT,
    ServerProcess,
    bayeux_options,
    free_port,
    log_tail,
    no_proxy_opener,
    stop_process,
)
from tests.support.redis_server import RedisServer

HAPROXY_CONFIG = REPO_ROOT / "docker" / "haproxy.cfg"
NODE_IDS = ("node1", "node2", "node3")
"""Each node's --node-id, which is also its HAProxy server name and SRV cookie value."""

NODE_OPTIONS: dict[str, str | int] = {
    "replay_channels": "/events/**",
    "max_interval": 3000,
}


class ClusterError(AssertionError):
    """Something in the cluster did not reach the expected state in time."""


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with no_proxy_opener().open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def http_post_json(url: str, body: object, timeout: float = 5.0) -> tuple[int, object]:
    """(status, decoded JSON) of a POST of JSON."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with no_proxy_opener().open(request, timeout=timeout) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), None


def wait_until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> float:
    """Polls condition every 50 ms; returns the seconds it took, or raises ClusterError."""
    start = time.monotonic()
    deadline = start + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ClusterError(f"not within {timeout} s: {what()}")
        time.sleep(0.05)
    return time.monotonic() - start


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(path).is_file()),
        None,
    )


def haproxy_check(binary: str, env: Mapping[str, str]) -> tuple[int, str]:
    """`haproxy -c` on the shipped docker/haproxy.cfg with env: its exit code and output."""
    completed = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CONFIG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return completed.returncode, completed.stdout + completed.stderr


class HAProxyProcess:
    """`haproxy -f docker/haproxy.cfg -db` with the nodes' addresses in its environment."""

    def __init__(self, binary: str, node_addresses: Mapping[str, str]) -> None:
        self.binary = binary
        self.port = free_port()
        self.stats_port = free_port()
        self.env = {
            **os.environ,
            "LB_BIND": f"{LOOPBACK}:{self.port}",
            "STATS_BIND": f"{LOOPBACK}:{self.stats_port}",
            **{f"{name.upper()}_ADDR": address for name, address in node_addresses.items()},
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix="haproxy-")  # noqa: SIM115

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [self.binary, "-f", str(HAPROXY_CONFIG), "-db"]

    def check_config(self) -> str:
        """`haproxy -c` on the shipped file with this harness's environment; its output."""
        returncode, output = haproxy_check(self.binary, self.env)
        if returncode != 0:
            raise ClusterError(f"haproxy -c -f {HAPROXY_CONFIG} failed:\n{output}")
        return output

    def start(self, timeout: float = 10.0) -> None:
        self.check_config()
        self._process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: self._exited() or http_get(self.stats_url)[0] == 200,
                timeout,
                lambda: f"HAProxy's stats page did not answer; its output:\n{self.output()}",
            )
            if self._exited():
                raise ClusterError(f"{' '.join(self.command)} exited:\n{self.output()}")
        except BaseException:
            self.close()
            raise

    def _exited(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    @property
    def stats_url(self) -> str:
        return f"http://{LOOPBACK}:{self.stats_port}/stats;csv"

    def server_states(self) -> dict[str, str]:
        """Each backend server's status as HAProxy sees it: UP, DOWN, "UP 1/2", ..."""
        status, body = http_get(self.stats_url)
        if status != 200:
            return {}
        rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "bayeux_nodes" and row["svname"] in NODE_IDS
        }

    def wait_states(self, expected: Mapping[str, str], timeout: float = 15.0) -> float:
        """Waits until every named server has the given status (exactly); returns seconds."""

        def reached() -> bool:
            states = self.server_states()
            return all(states.get(name) == status for name, status in expected.items())

        return wait_until(
            reached,
            timeout,
            lambda: f"HAProxy servers {self.server_states()}, expected {dict(expected)}",
        )

    def output(self, lines: int = 60) -> str:
        return log_tail(self._log, lines)

    def close(self) -> None:
        if self._process is not None:
            stop_process(self._process, grace=5)
            self._process = None
        self._log.close()


class Cluster:
    """redis-server, three `python -m bayeux` nodes on Redis, and HAProxy in front."""

    def __init__(self, haproxy: str) -> None:
        self.redis = RedisServer()
        self.nodes: dict[str, ServerProcess] = {}
        self._haproxy_binary = haproxy
        self.haproxy: HAProxyProcess | None = None

    def start(self) -> None:
        self.redis.start()
        for node_id in NODE_IDS:
            args = ["--redis", self.redis.url, "--node-id", node_id, "--log-level", "WARNING"]
            self.nodes[node_id] = ServerProcess("bayeux", [*args, *bayeux_options(NODE_OPTIONS)])
        for node in self.nodes.values():
            node.start()
        self.haproxy = HAProxyProcess(
            self._haproxy_binary,
            {node_id: f"{node.host}:{node.port}" for node_id, node in self.nodes.items()},
        )
        self.haproxy.start()
        self.lb.wait_states(dict.fromkeys(NODE_IDS, "UP"))

    @property
    def lb(self) -> HAProxyProcess:
        assert self.haproxy is not None, "the cluster is not started"
        return self.haproxy

    def endpoint(self, node_id: str) -> str:
        """A node's own Bayeux URL, bypassing HAProxy."""
        return self.nodes[node_id].base_url + "/cometd"

    @property
    def lb_endpoint(self) -> str:
        return self.lb.base_url + "/cometd"

    def health(self, node_id: str) -> tuple[int, dict[str, Any] | None]:
        status, body = http_get(self.nodes[node_id].base_url + "/health")
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    def wait_health(
        self, status: int, node_ids: tuple[str, ...] = NODE_IDS, timeout: float = 10.0
    ) -> float:
        """Waits until every given node's /health answers status; returns seconds."""
        return wait_until(
            lambda: all(self.health(node_id)[0] == status for node_id in node_ids),
            timeout,
            lambda: (
                f"/health of {node_ids} is {[self.health(n) for n in node_ids]}, "
                f"expected HTTP {status}"
            ),
        )

    def kill_node(self, node_id: str) -> None:
        self.nodes[node_id].kill()

    def kill_redis(self) -> None:
        self.redis.stop()  # SIGKILL

    def restore(self) -> None:
        """Whatever a test broke: Redis and every node running and healthy, every server UP
        in HAProxy (so the next test has the whole cluster)."""
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start()
        for node in self.nodes.values():
            if not node.running:
                node.start()
        self.wait_health(200)
        self.lb.wait_states(dict.fromkeys(NODE_IDS, "UP"))

    def output(self) -> str:
        """What every process printed, for failure messages."""
        parts = [f"--- {node_id} ---\n{node.output(40)}" for node_id, node in self.nodes.items()]
        if self.haproxy is not None:
            parts.append(f"--- haproxy ---\n{self.haproxy.output(40)}")
        return "\n".join(parts)

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
        if self.haproxy is not None:
            self.haproxy.close()
        self.redis.stop()


def require_haproxy() -> str:
    binary = haproxy_binary()
    if binary is None:
        raise ClusterError(
            "haproxy is not installed: the multi-node tests run HAProxy in front of the nodes "
            "(`apt-get install haproxy`, which scripts/test does)"
        )
    return binary


__all__ = [
    "HAPROXY_CONFIG",
    "NODE_IDS",
    "Cluster",
    "ClusterError",
    "HAProxyProcess",
    "http_get",
    "http_post_json",
    "require_haproxy",
    "wait_until",
]
