"""Interop: the official CometD JavaScript client (npm `cometd`, run in Node) against our server.

Each test runs one scenario of node/scenarios.mjs in a separate Node process, over websocket and
over long-polling, and asserts on the JSON facts it prints. A failing scenario's message carries
the client's last wire messages and the server's output.

Run: `cd tests/interop/node && npm ci` once, then `.venv/bin/python -m pytest tests/interop`.
One scenario by hand: `node tests/interop/node/scenarios.mjs wildcards http://127.0.0.1:PORT/cometd
long-polling` against a running `python -m bayeux --port PORT`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support.cometd_js import NODE_PROJECT, describe_sequence, require_node_client
from tests.support.processes import (
    NodeScriptError,
    NodeSession,
    ServerProcess,
    run_node,
    running_bayeux_server,
)

SCENARIOS = NODE_PROJECT / "scenarios.mjs"
TRANSPORTS = ["websocket", "long-polling"]
SUITE = "the interop tests"

Result = dict[str, Any]


def endpoint(server: ServerProcess) -> str:
    return server.base_url + "/cometd"


@contextmanager
def server_output_on_failure(server: ServerProcess) -> Iterator[None]:
    """Appends the server's output to a failing scenario's message."""
    try:
        yield
    except NodeScriptError as error:
        raise NodeScriptError(f"{error}\n--- server output (tail) ---\n{server.output()}") from None


@pytest.fixture(scope="module")
def server_process() -> Iterator[ServerProcess]:
    """One server process for the scenarios that leave it running; each uses its own channels.
    (Not `server`: tests/conftest.py has an in-process one by that name.)"""
    with running_bayeux_server() as running:
        yield running


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_scenario(server: ServerProcess, name: str, transport: str) -> Result:
    require_node_client(SUITE)
    with server_output_on_failure(server):
        result = run_node(SCENARIOS, [name, endpoint(server), transport], timeout=120)
    assert result["ok"] is True, result
    assert (result["scenario"], result["transport"]) == (name, transport)
    return result


def assert_session_probe(probe: Result, message_id: str, *, successful: bool) -> Result:
    """The reply to message_id in a raw HTTP probe the disconnect scenario made."""
    assert probe["httpStatus"] == 200, probe
    replies: list[Result] = probe["replies"]
    [reply] = [reply for reply in replies if reply.get("id") == message_id]
    assert reply["successful"] is successful, probe
    return reply


def test_handshake_assigns_distinct_client_ids_and_negotiates_requested_transport(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "handshake", transport)

    first, second = result["clientIds"]
    assert isinstance(first, str) and first
    assert isinstance(second, str) and second
    assert first != second
    assert result["replyClientIds"] == result["clientIds"]
    assert result["transports"] == [transport, transport]
    assert result["version"] == "1.0"
    assert transport in result["supportedConnectionTypes"]
    assert result["firstConnect"]["successful"] is True


def test_broadcast_reaches_every_subscriber_including_the_publisher(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "broadcast", transport)

    channel = result["channel"]
    assert result["publishAcks"] == [True, True, True]
    assert result["subscriber"]["seqs"] == [0, 1, 2]
    assert result["subscriber"]["channels"] == [channel] * 3
    assert [data["from"] for data in result["subscriber"]["data"]] == [
        result["publisherClientId"]
    ] * 3
    # broadcast_to_publisher defaults to true
    assert result["publisher"]["seqs"] == [0, 1, 2]
    assert result["publisher"]["channels"] == [channel] * 3


def test_wildcard_subscriptions_match_one_and_many_segments(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "wildcards", transport)

    root = result["root"]
    # published, in order: root/a/b, root, root+"cat"/a, root/a, root/a/b/c, /other+root/a, root/end
    single = [f"{root}/a", f"{root}/end"]
    multi = [f"{root}/a/b", f"{root}/a", f"{root}/a/b/c", f"{root}/end"]
    assert result["single"]["delivered"] == single, "what the server sent to the /* subscriber"
    assert result["single"]["notified"] == single
    assert result["multi"]["delivered"] == multi, "what the server sent to the /** subscriber"
    assert result["multi"]["notified"] == multi


def test_service_echo_replies_to_the_sender_only(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "service-echo", transport)

    assert result["ack"] == {"successful": True, "channel": "/service/echo"}
    assert result["echoes"] == [{"channel": "/service/echo", "data": result["request"]}]
    assert result["senderServiceDeliveries"] == 1
    # The other client, subscribed to /**, saw the later broadcast barrier but not the echo.
    assert result["observerServiceDeliveries"] == 0, "a /** subscriber got the /service/echo reply"
    assert result["observerChannels"] == [result["barrier"]]


def test_remote_call_returns_the_request_data(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "remote-call", transport)

    expected = [
        {"successful": True, "channel": "/service/rpc/echo", "data": request, "error": None}
        for request in result["requests"]
    ]
    assert result["replies"] == expected


def test_unsubscribe_stops_delivery(server_process: ServerProcess, transport: str) -> None:
    result = run_scenario(server_process, "unsubscribe", transport)

    assert result["unsubscribeReply"] == {"successful": True, "subscription": result["channel"]}
    assert result["notified"] == [1]
    assert result["delivered"] == [1], "the server kept sending after /meta/unsubscribe"


def test_disconnect_is_acknowledged_and_the_session_is_forgotten(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "disconnect", transport)

    assert result["reply"] == {"successful": True, "channel": "/meta/disconnect", "error": None}
    assert result["statusAfter"] == "disconnected"
    assert result["clientIdAfter"] is None
    if transport == "long-polling":  # raw HTTP probes as the client's browser (see scenarios.mjs)
        assert_session_probe(result["probeBefore"], "probe-1", successful=True)
        reply = assert_session_probe(result["probeAfter"], "probe-2", successful=False)
        assert reply["error"] == "402::session_unknown"
        assert reply["advice"]["reconnect"] == "handshake"


def test_ack_extension_is_negotiated_and_messages_arrive(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "ack", transport)

    assert result["handshakeRequestExt"] == {"ack": True}
    assert result["handshakeReplyExt"]["ack"] is True
    assert result["received"] == [0, 1, 2, 3, 4]
    # The client sends ext.ack on /meta/connect only once it knows the server supports acks...
    sent = result["connectAcksSent"]
    assert sent and all(isinstance(ack, int) for ack in sent), sent
    # ...and it acknowledges the batch numbers the server puts in /meta/connect replies.
    received = result["connectAcksReceived"]
    assert any(isinstance(ack, int) for ack in received), received


def test_thousand_messages_arrive_in_order_without_loss_or_duplicates(
    server_process: ServerProcess, transport: str
) -> None:
    result = run_scenario(server_process, "ordered", transport)

    count = result["count"]
    assert count == 1000
    assert result["acked"] == count
    received = result["received"]
    assert received == list(range(count)), describe_sequence(received, range(count))


def test_client_rehandshakes_and_resubscribes_after_server_restart(transport: str) -> None:
    require_node_client(SUITE)
    with running_bayeux_server() as server, server_output_on_failure(server):
        args = ["rehandshake", endpoint(server), transport]
        with NodeSession(SCENARIOS, args) as session:
            session.expect_line("READY", timeout=60)
            server.restart()  # same port; the memory engine forgets every session
            session.send_line("RESTARTED")
            result = session.result(timeout=90)

    assert result["ok"] is True, result
    before, after = result["clientIds"]
    assert before != after
    assert result["reestablish"] == [False, True]
    # The first /meta/connect after the restart carried the forgotten clientId.
    assert any(
        failed["error"] == "402::session_unknown" and failed["advice"]["reconnect"] == "handshake"
        for failed in result["failedConnects"]
    ), result["failedConnects"]
    first, second = result["subscriptions"]
    assert first == second == {"successful": True, "subscription": first["subscription"]}
    assert result["received"] == ["before", "after"]
