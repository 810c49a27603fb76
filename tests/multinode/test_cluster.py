"""Three Bayeux nodes on one Redis, behind HAProxy, driven by the official CometD JS client.

Each test runs a scenario of tests/interop/node/multinode.mjs in Node; the ones that break
something (kill a node, kill Redis) talk to the script line by line and do the breaking here,
at the moment the script says so. Run: `.venv/bin/python -m pytest tests/multinode -q`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.cometd_js import describe_sequence

from .cluster import NODE_IDS, Cluster, http_get, wait_until
from .scenarios import Result, cluster_output_on_failure, run_scenario, session

TRANSPORTS = ["websocket", "long-polling"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_publish_on_one_node_reaches_subscribers_on_every_node_in_order(
    whole_cluster: Cluster, transport: str
) -> None:
    count = 200
    result = run_scenario(whole_cluster, "broadcast", transport=transport, count=count)

    assert result["transports"] == [transport] * 3
    for node_id in NODE_IDS:
        received = result["received"][node_id]
        assert received == list(range(count)), (
            f"subscriber on {node_id}: {describe_sequence(received, range(count))}"
        )


def test_a_message_for_a_user_reaches_all_their_sessions_on_every_node_and_nobody_else(
    whole_cluster: Cluster, transport: str
) -> None:
    count = 5
    result = run_scenario(whole_cluster, "users", transport=transport, count=count)

    assert result["binds"] == [{"user": "alice"}, {"user": "alice"}, {"user": "bob"}]
    assert result["sends"] == [{"sent": True}] * count
    assert result["sendToNobody"] == {"sent": True}
    for_alice = [{"channel": "/private", "data": {"n": n, "to": "alice"}} for n in range(count)]
    # alice@node1 and alice@node3 each get every message, in order, without subscribing
    assert result["received"]["alice@node1"] == for_alice
    assert result["received"]["alice@node3"] == for_alice
    # bob, on node2 where the messages were sent from, gets only his own (the barrier)
    assert result["received"]["bob@node2"] == [
        {"channel": "/private", "data": {"barrier": True, "to": "bob"}}
    ]


def test_haproxy_keeps_a_long_polling_client_on_one_node_for_its_whole_life(
    whole_cluster: Cluster,
) -> None:
    rounds = 10
    result = run_scenario(whole_cluster, "sticky", rounds=rounds)

    nodes = set()
    for name, client in result["clients"].items():
        node = client["srvCookie"]
        assert node in NODE_IDS, (name, client)
        nodes.add(node)
        # HAProxy placed it once (one SRV cookie, in the first response) ...
        assert client["srvSetCookies"] == [node], (name, client)
        # ... and every request went there: /health asked with its cookies, before and after,
        # answers from that node, and the session was never unknown (no 402, no re-handshake).
        assert client["healthNodes"] == [node, node], (name, client)
        assert client["handshakeRequests"] == 1, (name, client)
        assert client["browserSetCookies"] == 1, (name, client)
        assert client["failedConnects"] == [], (name, client)
        assert client["successfulConnects"] >= rounds, (name, client)
        assert client["transport"] == "long-polling"
        assert client["received"] == list(range(rounds)), (name, client)
    # roundrobin spreads new clients: the two talked to each other across nodes
    assert len(nodes) == 2, result["clients"]


VICTIM, PUBLISHER_NODE, EVENTS = "node2", "node1", 300
DURABLE_SUBSCRIBERS = [
    ["ws-on-node2", "websocket", VICTIM],
    ["lp-on-node2", "long-polling", VICTIM],
    ["ws-on-node3", "websocket", "node3"],
    ["lp-on-node3", "long-polling", "node3"],
]
"""[name, transport, node]: each reaches the cluster through HAProxy, placed on node by the
SRV cookie it starts with (as if HAProxy had placed it there before)."""


def run_failover(cluster: Cluster, stop_victim: Callable[[], None]) -> tuple[Result, float]:
    """The failover scenario: subscribers of a durable channel on VICTIM and node3, 300 events
    published from PUBLISHER_NODE (15 ms apart); once each subscriber has 100, stop_victim()
    runs. Returns the result and how long HAProxy took to mark VICTIM down."""
    parameters: dict[str, Any] = {
        "subscribers": DURABLE_SUBSCRIBERS,
        "publisherNode": PUBLISHER_NODE,
        "count": EVENTS,
        "paceMs": 15,
        "killAfter": 100,
    }
    with (
        cluster_output_on_failure(cluster),
        session(cluster, "failover", **parameters) as script,
    ):
        placement = json.loads(script.expect_prefix("NODES ", timeout=30))
        for name, _, node in DURABLE_SUBSCRIBERS:
            assert placement[name] == {"srv": node, "health": node}, placement
        script.send_line("START")
        script.expect_line("KILL_NOW", timeout=30)
        stopped = time.monotonic()
        # In a thread: a graceful stop blocks until the node has exited.
        stopping = threading.Thread(target=stop_victim, name=f"stop-{VICTIM}")
        stopping.start()
        try:
            script.send_line(f"KILLED {VICTIM}")
            cluster.lb.wait_states({VICTIM: "DOWN"}, timeout=10)
            marked_down = time.monotonic() - stopped
            result = script.result(timeout=60)
        finally:
            stopping.join(timeout=30)
    return result, marked_down


def describe_failure(failure: dict[str, Any]) -> str:
    """A failed /meta/connect in a word: the server's error, or the transport's reason."""
    if failure["error"]:
        return str(failure["error"])
    return f"transport: {failure['reason']} (HTTP {failure['httpCode']})"


def check_every_event_exactly_once(result: Result) -> dict[str, Any]:
    """Every subscriber got every event once by replayId (duplicates are counted, not
    failed, for the victim's subscribers), in order and with the right data; returns the
    numbers per subscriber."""
    reference = result["reference"]
    expected_ids = reference["replayIds"]
    first = expected_ids[0]
    assert expected_ids == list(range(first, first + EVENTS)), "the publisher's own copy"
    assert reference["seqs"] == list(range(EVENTS))
    seq_of = dict(zip(expected_ids, reference["seqs"], strict=True))
    numbers: dict[str, Any] = {}
    for name, _, node in DURABLE_SUBSCRIBERS:
        sub = result["subscribers"][name]
        ids: list[int] = sub["replayIds"]
        numbers[name] = {
            "published": EVENTS,
            "received": len(ids),
            "duplicates": len(ids) - len(set(ids)),
            "lost": len(set(expected_ids) - set(ids)),
            "handshakes": sum(1 for h in sub["handshakes"] if h["successful"]),
            "resubscribedMs": sub["resubscribedMs"],
            "gapMs": None
            if sub["firstAfterKillMs"] is None or sub["lastBeforeKillMs"] is None
            else sub["firstAfterKillMs"] - sub["lastBeforeKillMs"],
            "nodeAfter": (sub["srvSetCookies"] or [node])[-1],
            "failedConnects": dict(Counter(describe_failure(f) for f in sub["failedConnects"])),
        }
    print(f"\n{json.dumps(numbers, indent=1)}")
    for name, transport, node in DURABLE_SUBSCRIBERS:
        sub = result["subscribers"][name]
        ids = sub["replayIds"]
        # every event carries its replayId, and the right data for it
        assert all(isinstance(i, int) for i in ids), (name, ids)
        assert all(seq_of.get(i) == seq for i, seq in zip(ids, sub["seqs"], strict=True)), name
        # zero lost, and in replayId order once duplicates (detectable by id) are dropped
        unique = list(dict.fromkeys(ids))
        assert unique == expected_ids, f"{name}: {describe_sequence(ids, expected_ids)}"
        assert sub["transportAfter"] == transport, (name, sub["transportAfter"])
        if node != VICTIM:
            assert numbers[name]["handshakes"] == 1, (name, sub["handshakes"])
            assert sub["failedConnects"] == [], (name, sub["failedConnects"])
            assert numbers[name]["duplicates"] == 0, describe_sequence(ids, expected_ids)
        else:
            assert sub["receivedBeforeKill"] < EVENTS, f"{name}: the stop was not mid-stream"
            assert numbers[name]["nodeAfter"] in set(NODE_IDS) - {VICTIM}, (name, sub)
    return numbers


def test_subscribers_of_a_killed_node_resume_elsewhere_with_every_event_exactly_once(
    whole_cluster: Cluster,
) -> None:
    """SIGKILL the node two subscribers (websocket, long-polling) reach through HAProxy, while
    300 events are published on a durable channel from another node; HAProxy sends them to a
    live node, they re-handshake and re-subscribe from their last replayId."""
    cluster = whole_cluster
    result, marked_down = run_failover(cluster, lambda: cluster.kill_node(VICTIM))
    print(
        f"\nkill-a-node: SIGKILL after {result['killedAtMs']} ms of publishing; HAProxy "
        f"marked it DOWN {marked_down:.2f} s later"
    )
    check_every_event_exactly_once(result)
    channel = result["channel"]
    for name, _, node in DURABLE_SUBSCRIBERS:
        if node != VICTIM:
            continue
        sub = result["subscribers"][name]
        # a new session on a live node (HAProxy redispatched the stale SRV cookie) ...
        successful = [h for h in sub["handshakes"] if h["successful"]]
        assert len(successful) == 2 and successful[-1]["at"] > 0, (name, sub["handshakes"])
        errors = {f["error"] for f in sub["failedConnects"]}
        assert "402::session_unknown" in errors, (name, sub["failedConnects"])
        # ... which re-subscribed from the last replayId it had seen
        replay_asked = sub["subscribeReplayExt"]
        assert replay_asked[0] == {channel: -2}, (name, replay_asked)
        assert len(replay_asked) == 2, (name, replay_asked)
        resumed_from = replay_asked[1][channel]
        assert resumed_from in sub["replayIds"][:-1], (name, resumed_from)
        assert sub["resubscribedMs"] is not None and sub["resubscribedMs"] < 10_000, (name, sub)


def test_subscribers_of_a_node_stopped_gracefully_carry_on_elsewhere_without_losing_events(
    whole_cluster: Cluster,
) -> None:
    """SIGTERM (a rolling restart) instead: the node hands its sessions over through Redis
    and HAProxy sends their next requests to a live node, which adopts them."""
    cluster = whole_cluster
    result, marked_down = run_failover(cluster, lambda: cluster.nodes[VICTIM].stop(grace=10))
    print(
        f"\ngraceful stop: SIGTERM after {result['killedAtMs']} ms of publishing; HAProxy "
        f"marked it DOWN {marked_down:.2f} s later"
    )
    check_every_event_exactly_once(result)


@dataclass
class RedisOutage:
    """What the redis-outage scenario saw, and how long the cluster took to notice."""

    result: Result
    went_down: float
    came_back: float
    lb_back: float
    unhealthy_bodies: dict[str, Any]


@pytest.fixture(scope="module")
def redis_outage(cluster: Cluster) -> Iterator[RedisOutage]:
    """Runs the redis-outage scenario once (two tests look at it): Redis is SIGKILLed while
    one client per node is connected, and restarted on the same port."""
    cluster.restore()
    count = 20
    try:
        with (
            cluster_output_on_failure(cluster),
            session(cluster, "redis-outage", count=count) as script,
        ):
            script.expect_line("READY", timeout=30)
            cluster.kill_redis()
            went_down = cluster.wait_health(503, timeout=10)
            bodies = {node_id: cluster.health(node_id)[1] for node_id in NODE_IDS}
            # HAProxy takes every node out: nobody is left to serve
            cluster.lb.wait_states(dict.fromkeys(NODE_IDS, "DOWN"), timeout=10)
            assert http_get(cluster.lb.base_url + "/health")[0] == 503
            script.send_line("REDIS_DOWN")
            script.expect_line("CHECKED", timeout=30)

            cluster.redis.start()
            came_back = cluster.wait_health(200, timeout=15)
            lb_back = wait_until(
                lambda: http_get(cluster.lb.base_url + "/health")[0] == 200,
                10,
                lambda: f"HAProxy servers {cluster.lb.server_states()}",
            )
            script.send_line("REDIS_UP")
            result = script.result(timeout=60)
        yield RedisOutage(result, went_down, came_back, lb_back, bodies)
    finally:
        cluster.restore()


def test_nodes_go_unhealthy_refuse_publishes_and_recover_when_redis_restarts(
    redis_outage: RedisOutage,
) -> None:
    result = redis_outage.result
    count = result["count"]
    for node_id, body in redis_outage.unhealthy_bodies.items():
        assert body is not None and body["status"] == "unhealthy" and body["node"] == node_id
    during = result["during"]
    engine_unavailable = {"successful": False, "error": "503::engine_unavailable"}
    assert during["publishes"] == [engine_unavailable] * 3
    assert during["subscribe"] == engine_unavailable
    assert during["bind"]["successful"] is False
    assert during["bind"]["error"] == "503::engine_unavailable"
    # the sessions lived through the outage: no 402, no re-handshake
    assert result["handshakeRequests"] == [1, 1, 1]
    assert result["failedConnects"] == {node_id: [] for node_id in NODE_IDS}
    # nothing published during the outage was delivered; everything after it was, everywhere,
    # once, and in publish order per publishing node (the publishers take turns, each waiting
    # for its predecessor's acknowledgement, but a node delivers its own publishes at once,
    # so one from node1 may overtake one from node3 still on its way through Redis)
    after = [{"phase": "after", "seq": seq, "from": NODE_IDS[seq % 3]} for seq in range(count)]
    for node_id in NODE_IDS:
        received = result["received"][node_id]
        assert received[0] == {"phase": "before"}, node_id
        assert sorted(received[1:], key=lambda data: data["seq"]) == after, node_id
        for origin in NODE_IDS:
            seqs = [data["seq"] for data in received[1:] if data["from"] == origin]
            assert seqs == sorted(seqs), (node_id, origin, seqs)
    print(
        f"\nredis restart: all /health 503 after {redis_outage.went_down:.2f} s; "
        f"200 again {redis_outage.came_back:.2f} s after redis-server restarted; "
        f"HAProxy serving again {redis_outage.lb_back:.2f} s later; "
        f"user bind during the outage: {during['bind']}"
    )


def test_a_user_whose_bind_failed_during_an_outage_can_bind_again_once_redis_is_back(
    redis_outage: RedisOutage,
) -> None:
    reachable = redis_outage.result["userBoundDuringOutage"]
    assert reachable == [
        # the bind during the outage was refused (503::engine_unavailable): not bound yet
        {"attempt": "after the failed bind", "rebind": None, "carolReceived": False},
        {"attempt": "after binding again", "rebind": {"user": "carol"}, "carolReceived": True},
    ]
