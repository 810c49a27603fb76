"""The cluster the multi-node tests run against: a real redis-server, three `python -m bayeux`
nodes on it (node1..node3, durable channels /events/**, max_interval 3 s) and HAProxy with the
shipped docker/haproxy.cfg in front. One cluster per test module; a test that kills a node or
Redis gets the whole cluster back before the next test starts (`whole_cluster`).

HAProxy is required, not optional: the tests fail (never skip) when it is not installed;
scripts/test installs it. So are Node.js and the npm packages of tests/interop/node.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cometd_js import require_node_client

from .cluster import Cluster, ClusterError, require_haproxy


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        haproxy = require_haproxy()
    except ClusterError as error:
        pytest.fail(str(error))
    require_node_client("the multi-node tests")
    running = Cluster(haproxy)
    try:
        running.start()
        yield running
    finally:
        running.close()


@pytest.fixture
def whole_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with Redis and all three nodes up (and UP in HAProxy), before and after."""
    cluster.restore()
    yield cluster
    cluster.restore()
