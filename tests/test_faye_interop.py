"""Interop (spec-chat-v2 item 83): the Faye client (npm `faye`, run in Node by
interop/node/faye.mjs) against the GMS server, over long-polling and websocket: handshake,
subscribe, publish and receive, then a whole Chat API v2 chat over CometD.

Faye has no listener for unsubscribed channels: a Faye user of GMS subscribes to
`/service/chatV2/<service>` (the server acknowledges it as a no-op) and gets every reply and
notification, data only, through that subscription's callback. The agent is played here through
the chat engine, as in interop/test_chat_js_client.py, whose server fixture and Node driver this
reuses. Run `cd tests/interop/node && npm ci` once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bayeux import protocol as p
from tests.conftest import (
    PipelineClient,
    ServerFactory,
    Started,
    connected_client,
    fast_options,
)
from tests.interop.test_chat_js_client import Gms, NodeChat, gms, untimed
from tests.support.chat_cometd import question_and_answer
from tests.support.cometd_js import NODE_PROJECT, require_node_client

__all__ = ["gms"]  # the fixture, imported for the tests below

SCRIPT = NODE_PROJECT / "faye.mjs"
CHANNEL = "/service/chatV2/customer-support"


@pytest.fixture(params=["long-polling", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def faye(gms: Gms, transport: str) -> AsyncIterator[NodeChat]:
    """node/faye.mjs's flow against the server, closed afterwards."""
    require_node_client("the Faye interop test", ("faye",))

    async with Started(NodeChat.start, NodeChat.close) as started:
        yield await started("flow", gms.url, transport, SCRIPT)


async def test_a_faye_client_does_bayeux_and_a_whole_chat(
    gms: Gms, faye: NodeChat, transport: str
) -> None:
    key = (await faye.expect("SENT"))["secureKey"]
    await gms.agent(key, "How can I help?", join=True)
    result = await faye.result()

    handshake = result["handshake"]
    assert handshake["successful"] is True
    assert transport in handshake["supportedConnectionTypes"]
    # Faye handshakes over HTTP, then every /meta/connect goes over the chosen transport.
    assert result["connectionTypes"] == [transport]
    assert result["room"] == [{"text": "hello from faye"}], "its own publication came back"

    assert [untimed(data) for data in result["notifications"]] == question_and_answer(key)
    assert result["replies"] == [result["notifications"][i] for i in (0, 1, 4)]
    # each operation's publish was acknowledged as a plain Bayeux publish
    ack = {"channel": CHANNEL, "successful": True}
    assert [{k: r[k] for k in ack} for r in result["publishReplies"]] == [ack, ack, ack]


FAYE_CORS = "cross-origin-long-polling"


async def test_fayes_cross_origin_long_polling_is_taken_as_long_polling(
    make_server: ServerFactory,
) -> None:
    """Faye's browser client names its CORS long-polling so; its requests are long-polling's."""
    server = await make_server()
    client = await connected_client(server, supportedConnectionTypes=[FAYE_CORS])
    assert client.client_id in server.sessions


async def test_cross_origin_long_polling_is_refused_when_long_polling_is_off(
    make_server: ServerFactory,
) -> None:
    server = await make_server(fast_options(allowed_transports=(p.WEBSOCKET,)))
    reply = await PipelineClient(server).handshake(supportedConnectionTypes=[FAYE_CORS])
    assert (reply["successful"], reply["error"]) == (False, p.CONNECTION_TYPE_UNSUPPORTED)
