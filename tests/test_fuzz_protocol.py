"""Fuzzing: hostile bytes and hostile messages never make the server fail unexpectedly.

`decode_batch` may only raise `ProtocolError` (an HTTP 400). `BayeuxServer.handle_batch` may
not raise at all, whatever JSON a client sends: every message gets a reply dict with a
`channel` and a boolean `successful` that encodes back to JSON (or a held /meta/connect whose
reply does), because a transport must always be able to answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayeux import BayeuxServer, Message, ProtocolError
from bayeux import protocol as p
from tests.conftest import PipelineClient, fast_options, standard_server

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
"""What orjson can decode from a request (integers beyond 64 bits come back as floats)."""

json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)

LIVE = "\x00live-session\x00"
"""Stands for the clientId of a live session; replaced before each batch is sent."""

known_channels = st.sampled_from(
    [
        p.META_HANDSHAKE,
        p.META_CONNECT,
        p.META_SUBSCRIBE,
        p.META_UNSUBSCRIBE,
        p.META_DISCONNECT,
        "/meta/other",
        "/t",
        "/t/a",
        "/t/*",
        "/t/**",
        "/**",
        "/service/echo",
        "/service/rpc/echo",
        "/service/nobody",
    ]
)
channels = known_channels | st.text(max_size=12) | json_values
patterns = st.sampled_from(["/t", "/t/*", "/t/**", "/**", "/meta/**", "/service/echo", "/a/*/b"])
subscriptions = patterns | st.lists(patterns | json_scalars, max_size=3) | json_values
advice = (
    st.fixed_dictionaries(
        {},
        optional={
            "timeout": st.integers(min_value=-10, max_value=20) | json_values,
            "interval": json_values,
        },
    )
    | json_values
)
timesync = (
    st.fixed_dictionaries({}, optional={"tc": json_scalars, "l": json_scalars, "o": json_scalars})
    | json_values
)
ext = (
    st.fixed_dictionaries(
        {},
        optional={
            "ack": st.booleans() | st.integers(min_value=-3, max_value=5) | json_values,
            "timesync": timesync,
        },
    )
    | json_values
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "channel": channels,
        "clientId": st.sampled_from([LIVE, LIVE, "deadbeef"]) | json_values,
        "id": st.sampled_from(["1", "a-2", 3]) | json_values,
        "data": json_values,
        "subscription": subscriptions,
        "advice": advice,
        "ext": ext,
        "supportedConnectionTypes": st.lists(
            st.sampled_from([*p.ALL_TRANSPORTS, "flash"]) | json_values, max_size=3
        )
        | json_values,
        "connectionType": st.sampled_from(list(p.ALL_TRANSPORTS)) | json_values,
        "version": st.just("1.0") | json_values,
    },
)
batches = st.lists(messages, min_size=1, max_size=5)

# -- decode_batch ------------------------------------------------------------------------------

bodies = (
    st.binary(max_size=200)
    | json_values.map(orjson.dumps)
    | st.lists(json_values, max_size=6).map(orjson.dumps)
    | st.lists(messages, max_size=6).map(orjson.dumps)
    | st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)
)


@FUZZ
@given(body=bodies, max_messages=st.integers(min_value=1, max_value=5))
def test_decode_batch_raises_only_protocol_error(body: bytes | str, max_messages: int) -> None:
    try:
        batch = p.decode_batch(body, max_messages)
    except ProtocolError:
        return
    assert isinstance(batch, list)
    assert 1 <= len(batch) <= max_messages
    assert all(isinstance(message, dict) for message in batch)


def test_decode_batch_on_deeply_nested_json_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        p.decode_batch(b"[" * 5000 + b"]" * 5000, 10)


# -- handle_batch ------------------------------------------------------------------------------

ERROR_CODE = re.compile(r"^\d{3}:")


class FuzzRig:
    """A started standard server on its own event loop, and a client whose session is kept
    alive between examples so that fuzzed messages can reach a real session."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self.runner = runner
        self.server: BayeuxServer = standard_server(fast_options())
        self.client = PipelineClient(self.server)
        runner.run(self.server.start())

    async def ensure_live_session(self) -> str:
        if self.client.client_id not in self.server.sessions:
            self.client.context.transport = p.LONG_POLLING
            reply = await self.client.handshake()
            assert reply["successful"] is True, reply
        assert self.client.client_id is not None
        return self.client.client_id

    async def check(self, batch: list[Message], transport: str) -> None:
        client_id = await self.ensure_live_session()
        self.client.context.transport = transport
        sent = [_with_live_client_id(message, client_id) for message in batch]
        result = await self.server.handle_batch(sent, self.client.context)
        assert isinstance(result.replies, list)
        for reply in result.replies:
            assert_wire_reply(reply)
        if result.held is not None:
            result.held.complete()
            deliveries, reply = self.server.finish_connect(result.held)
            assert_wire_reply(reply)
            for delivery in deliveries:
                orjson.loads(delivery.encoded)
        assert len(result.replies) + (result.held is not None) <= len(sent)


def _with_live_client_id(message: Message, client_id: str) -> Message:
    if message.get("clientId") == LIVE:
        return {**message, "clientId": client_id}
    return message


def assert_wire_reply(reply: Any) -> None:
    assert isinstance(reply, dict), reply
    assert "channel" in reply, reply
    assert isinstance(reply.get("successful"), bool), reply
    if reply["successful"] is False:
        assert isinstance(reply.get("error"), str) and ERROR_CODE.match(reply["error"]), reply
    encoded = p.encode(reply)
    assert orjson.loads(encoded) == orjson.loads(orjson.dumps(reply))


@pytest.fixture
def rig() -> Iterator[FuzzRig]:
    with asyncio.Runner() as runner:
        rig = FuzzRig(runner)
        yield rig
        runner.run(rig.server.close())


@FUZZ
@given(batch=batches, transport=st.sampled_from(list(p.ALL_TRANSPORTS)))
def test_handle_batch_never_raises_and_answers_every_message_with_a_wire_reply(
    rig: FuzzRig, batch: list[Message], transport: str
) -> None:
    rig.runner.run(rig.check(batch, transport))


well_addressed = st.tuples(known_channels, messages).map(
    lambda pair: {**pair[1], "channel": pair[0], "clientId": LIVE}
)
"""Messages on real channels from the live session: the other fields stay arbitrary."""


@FUZZ
@given(batch=st.lists(well_addressed, min_size=1, max_size=5))
def test_handle_batch_of_well_addressed_messages_never_raises(
    rig: FuzzRig, batch: list[Message]
) -> None:
    rig.runner.run(rig.check(batch, p.LONG_POLLING))


def test_timesync_with_a_huge_client_time_still_answers_a_json_encodable_handshake() -> None:
    """JSON numbers such as 1e300 are valid: the reply built from them must still encode."""

    async def scenario() -> None:
        server = standard_server(fast_options())
        await server.start()
        try:
            reply = await PipelineClient(server).handshake(
                ext={"timesync": {"tc": 1e300, "l": 0, "o": 0}}
            )
            assert reply["successful"] is True
            assert_wire_reply(reply)
        finally:
            await server.close()

    asyncio.run(scenario())
