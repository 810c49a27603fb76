"""The shipped deployment files (docker/): what can be checked without Docker.

HAProxy's config is also what the cluster tests run (test_cluster.py); here it is checked as
shipped, with docker-compose's defaults, and its timeouts against the server's connect hold.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bayeux.options import BayeuxOptions
from tests.support.processes import REPO_ROOT, ServerProcess, free_port
from tests.support.redis_server import RedisServer

from .cluster import (
    HAPROXY_CONFIG,
    NODE_IDS,
    ClusterError,
    haproxy_check,
    http_get,
    http_post_json,
    require_haproxy,
)

DOCKER = REPO_ROOT / "docker"
NGINX_CONFIG = DOCKER / "nginx.conf"
COMPOSE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"

HOLD_S = BayeuxOptions().timeout / 1000
"""How long the server holds a /meta/connect by default."""
CLIENT_NETWORK_DELAY_S = 10
"""The CometD JS client's maxNetworkDelay: it waits hold + this for a /meta/connect reply."""

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(value: str) -> float:
    """HAProxy and nginx durations: 500ms, 60s, 1m, 1h (a bare number: ms for HAProxy)."""
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert match, f"not a duration: {value}"
    return int(match[1]) * _UNITS[match[2] or "ms"]


def directives(path: Path) -> list[str]:
    """The config's lines without comments and surrounding blanks."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def haproxy_setting(lines: list[str], name: str) -> str:
    [value] = [line[len(name) :].strip() for line in lines if line.startswith(name + " ")]
    return value


def test_the_shipped_haproxy_config_is_valid_as_compose_runs_it() -> None:
    try:
        haproxy = require_haproxy()
    except ClusterError as error:
        pytest.fail(str(error))
    # No environment: the docker-compose defaults (node1:8080, ... which need not resolve
    # here: init-addr none starts such a server as down).
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    returncode, output = haproxy_check(haproxy, env)
    assert returncode == 0, output
    assert "Configuration file is valid" in output
    assert "ALERT" not in output, output


def test_haproxy_is_sticky_health_checked_and_outwaits_a_held_connect() -> None:
    lines = directives(HAPROXY_CONFIG)
    assert "cookie SRV insert indirect nocache httponly" in lines
    assert "option httpchk GET /health" in lines
    assert "http-check expect status 200" in lines
    assert any(re.fullmatch(r"option redispatch( \d+)?", line) for line in lines)
    # a held /meta/connect (and the client's network allowance on top) must not be cut
    assert seconds(haproxy_setting(lines, "timeout server")) > HOLD_S + CLIENT_NETWORK_DELAY_S
    assert seconds(haproxy_setting(lines, "timeout client")) > HOLD_S + CLIENT_NETWORK_DELAY_S
    assert seconds(haproxy_setting(lines, "timeout tunnel")) >= 600, "websockets"
    [default_server] = [line for line in lines if line.startswith("default-server ")]
    assert " check " in f"{default_server} "
    # one server per node, its cookie value the node id; addresses from the environment
    servers = [line.split() for line in lines if line.startswith("server ")]
    assert [(s[1], s[2], s[-2:]) for s in servers] == [
        (node, f'"${{{node.upper()}_ADDR-{node}:8080}}"', ["cookie", node]) for node in NODE_IDS
    ]


def test_nginx_is_sticky_websocket_ready_and_outwaits_a_held_connect() -> None:
    text = NGINX_CONFIG.read_text()
    lines = directives(NGINX_CONFIG)
    assert "hash $bayeux_lb_key consistent;" in lines
    assert "proxy_set_header Upgrade $http_upgrade;" in lines
    assert "proxy_set_header Connection $connection_upgrade;" in lines
    assert "proxy_http_version 1.1;" in lines
    assert "proxy_buffering off;" in lines
    [read_timeout] = re.findall(r"^\s*proxy_read_timeout (\w+);", text, re.MULTILINE)
    assert seconds(read_timeout) > HOLD_S + CLIENT_NETWORK_DELAY_S
    servers = re.findall(r"^\s*server (\S+:\d+)", text, re.MULTILINE)
    assert servers == [f"{node}:8080" for node in NODE_IDS]


def test_nginx_accepts_its_config() -> None:
    """`nginx -t` on the shipped file with loopback upstreams; nginx is optional."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (optional: only this check uses it)")
    text = NGINX_CONFIG.read_text()
    for node in NODE_IDS:
        text = text.replace(f"{node}:8080", f"127.0.0.1:{free_port()}")
    with tempfile.TemporaryDirectory(prefix="nginx-") as prefix:
        text = text.replace("pid /tmp/nginx-bayeux.pid;", f"pid {prefix}/nginx.pid;")
        config = Path(prefix) / "nginx.conf"
        config.write_text(text)
        completed = subprocess.run(
            [nginx, "-t", "-p", prefix, "-e", "stderr", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def compose_commands() -> dict[str, list[str]]:
    """Each node service's command (flow sequences of double-quoted strings: JSON)."""
    text = COMPOSE.read_text()
    found = re.findall(r"^  (node\d):\n(?:    .*\n)*?    command: (\[[^\]]*\])", text, re.MULTILINE)
    return {service: json.loads(command) for service, command in found}


def test_compose_runs_three_nodes_on_redis_behind_haproxy_with_the_shipped_config() -> None:
    text = COMPOSE.read_text()
    assert "\t" not in text
    commands = compose_commands()
    assert sorted(commands) == list(NODE_IDS)
    for node, command in commands.items():
        assert command == [
            "gms-server", "--host", "0.0.0.0", "--port", "8080",
            "--redis", "redis://redis:6379/0", "--node-id", node,
        ]  # fmt: skip
    assert re.search(r"^    image: redis:7$", text, re.MULTILINE)
    assert re.search(r"^    image: haproxy:2\.6$", text, re.MULTILINE)
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in text
    assert '"8080:8080"' in text
    dockerfile = directives(DOCKERFILE)
    assert "FROM python:3.11-slim" in dockerfile
    assert any(line.startswith("RUN pip install '.[fast]'") for line in dockerfile)
    assert 'CMD ["gms-server", "--host", "0.0.0.0", "--port", "8080"]' in dockerfile


def test_the_compose_node_command_serves_a_cluster_node() -> None:
    """node1's command line from docker-compose.yml, with loopback addresses, really runs:
    gms-server joins Redis under its node id and serves Bayeux where GMS clients look."""
    command = compose_commands()["node1"]
    assert command[:5] == ["gms-server", "--host", "0.0.0.0", "--port", "8080"]
    with RedisServer() as redis:
        # ServerProcess runs `python -m chat.cli --host 127.0.0.1 --port P` + the rest of it.
        args = command[5:]
        args[args.index("--redis") + 1] = redis.url
        with ServerProcess("chat.cli", args) as node:
            status, body = http_get(node.base_url + "/health")
            assert (status, json.loads(body)["node"]) == (200, "node1")
            assert redis.client().zscore("bayeux:nodes", "node1") is not None, "registered"
            handshake: dict[str, object] = {"channel": "/meta/handshake", "version": "1.0"}
            handshake["supportedConnectionTypes"] = ["long-polling"]
            for path in ("/genesys/cometd", "/cometd"):
                status, replies = http_post_json(node.base_url + path, [handshake])
                assert status == 200, path
                assert isinstance(replies, list) and replies[0]["successful"] is True, replies
