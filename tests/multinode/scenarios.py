"""Running tests/interop/node/multinode.mjs (the official CometD JS client) against a Cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.cometd_js import NODE_PROJECT
from tests.support.processes import NodeScriptError, NodeSession, run_node

from .cluster import Cluster

SCRIPT: Path = NODE_PROJECT / "multinode.mjs"

Result = dict[str, Any]


def config(cluster: Cluster, **parameters: Any) -> str:
    """The script's JSON argument: every endpoint plus the scenario's parameters."""
    endpoints = {
        "nodes": {node_id: cluster.endpoint(node_id) for node_id in cluster.nodes},
        "lb": cluster.lb_endpoint,
    }
    return json.dumps({**endpoints, **parameters})


@contextmanager
def cluster_output_on_failure(cluster: Cluster) -> Iterator[None]:
    """Appends what the nodes and HAProxy printed to a failing scenario's message."""
    try:
        yield
    except (NodeScriptError, AssertionError) as error:
        raise type(error)(f"{error}\n--- cluster output (tail) ---\n{cluster.output()}") from None


def run_scenario(cluster: Cluster, name: str, timeout: float = 60, **parameters: Any) -> Result:
    with cluster_output_on_failure(cluster):
        result = run_node(SCRIPT, [name, config(cluster, **parameters)], timeout=timeout)
    assert result["ok"] is True, result
    assert result["scenario"] == name
    return result


def session(cluster: Cluster, name: str, **parameters: Any) -> NodeSession:
    """A scenario that talks to its driver over stdin/stdout."""
    return NodeSession(SCRIPT, [name, config(cluster, **parameters)])
