"""Interop: a GMS Chat API v2 customer on the official CometD JavaScript client (npm `cometd`,
run in Node by node/chat.mjs) against the GMS server, over websocket and long-polling.

The server runs in this test's event loop (aiohttp on a free port), so the test plays the agent
through the chat engine while the Node script runs as an asyncio subprocess; the two talk by
lines (see node/chat.mjs). Run `cd tests/interop/node && npm ci` once.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bayeux import BayeuxServer
from bayeux.app import BAYEUX_SERVER
from chat.app import CHAT_ENGINE, create_app
from chat.chat_v2_cometd import CometdChat
from chat.engine import ChatEngine
from tests.conftest import Started, fast_options
from tests.interop.test_cometd_js_client import SUITE
from tests.support.chat_cometd import AGENT, event, notification, question_and_answer
from tests.support.cometd_js import NODE_PROJECT, require_node_client
from tests.support.processes import node_executable

SCRIPT = NODE_PROJECT / "chat.mjs"
STEP_TIMEOUT = 15.0

Result = dict[str, Any]


class NodeChat:
    """node/chat.mjs as an asyncio subprocess: never waited on by blocking, since the server
    it talks to runs in the same event loop."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout: list[str] = []
        self._stderr: list[bytes] = []
        assert process.stderr is not None
        self._stderr_task = asyncio.create_task(self._drain(process.stderr))

    @classmethod
    async def start(
        cls, scenario: str, url: str, transport: str, script: Path = SCRIPT
    ) -> NodeChat:
        """`script` (default node/chat.mjs) speaks the same line protocol (faye.mjs does)."""
        node = node_executable()
        assert node is not None
        process = await asyncio.create_subprocess_exec(
            node,
            str(script),
            scenario,
            url,
            transport,
            cwd=NODE_PROJECT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._stderr.append(chunk)

    async def _line(self, waiting_for: str) -> str | None:
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), STEP_TIMEOUT)
        except TimeoutError:
            raise await self._failure(f"timed out waiting for {waiting_for}") from None
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        self.stdout.append(line)
        return line

    async def expect(self, step: str) -> Result:
        """Wait for the script's `<step> <json>` line and return its facts."""
        while (line := await self._line(step)) is not None:
            if line.startswith(step + " "):
                facts: Result = json.loads(line[len(step) + 1 :])
                return facts
        raise await self._failure(f"exited before {step}")

    async def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def result(self) -> Result:
        while await self._line("the result") is not None:
            pass
        if await self.process.wait() != 0:
            raise await self._failure(f"exit code {self.process.returncode}")
        result: Result = json.loads(self.stdout[-1])
        assert result["ok"] is True, result
        return result

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._stderr_task

    async def _failure(self, what: str) -> AssertionError:
        await self.close()
        stderr = b"".join(self._stderr).decode(errors="replace")
        stdout = "\n".join(self.stdout)[-4000:]
        return AssertionError(
            f"chat.mjs: {what}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
        )


@dataclass
class Gms:
    http: TestServer
    bayeux: BayeuxServer
    chat: ChatEngine

    @property
    def url(self) -> str:
        return str(self.http.make_url("/genesys/cometd"))

    @property
    def cometd(self) -> CometdChat:
        return next(o for o in self.chat.observers if isinstance(o, CometdChat))

    async def agent(self, secure_key: str, *texts: str, join: bool = False) -> None:
        chat = await self.chat.by_secure_key(secure_key)
        if join:
            await self.chat.agent_join(chat.chat_id, "agent1", "Ann")
        for text in texts:
            await self.chat.agent_event(chat.chat_id, "agent1", "Message", text)


@pytest.fixture
async def gms() -> AsyncIterator[Gms]:
    require_node_client(SUITE)
    app = create_app(fast_options())
    http = TestServer(app, host="127.0.0.1")
    await http.start_server()
    yield Gms(http, app[BAYEUX_SERVER], app[CHAT_ENGINE])
    await http.close()


@pytest.fixture(params=["websocket", "long-polling"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


NodeChatFactory = Callable[[str, str, str], Awaitable[NodeChat]]


@pytest.fixture
async def node_chat() -> AsyncIterator[NodeChatFactory]:
    """`await node_chat(scenario, url, transport)`: node/chat.mjs started, closed afterwards."""
    async with Started(NodeChat.start, NodeChat.close) as started:
        yield started


def untimed(data: Result) -> Result:
    data = copy.deepcopy(data)
    for transcript_event in data.get("messages") or ():
        assert isinstance(transcript_event.pop("utcTime"), int)
    return data


async def test_a_whole_chat_with_the_cometd_js_client(
    gms: Gms, transport: str, node_chat: NodeChatFactory
) -> None:
    script = await node_chat("flow", gms.url, transport)
    key = (await script.expect("SENT"))["secureKey"]
    await gms.agent(key, "How can I help?", join=True)
    result = await script.result()

    assert result["transport"] == transport
    ack = {"successful": True, "channel": "/service/chatV2/customer-support"}
    assert result["acks"] == [ack, ack, ack]
    assert [untimed(data) for data in result["notifications"]] == question_and_answer(key)
    assert result["replies"] == [result["notifications"][i] for i in (0, 1, 4)]


async def test_a_reconnected_cometd_js_client_gets_exactly_the_missed_events(
    gms: Gms, transport: str, node_chat: NodeChatFactory
) -> None:
    script = await node_chat("reconnect", gms.url, transport)
    chat = await script.expect("CHAT")
    key, first_client = chat["secureKey"], chat["clientId"]
    await gms.agent(key, "first", join=True)
    assert await script.expect("SEEN") == {"nextPosition": 4}

    gms.bayeux.sessions[first_client].disconnect()  # the server forgets the Bayeux session
    await gms.cometd.settle()
    await gms.agent(key, "second", "third")
    await script.tell("DROPPED")
    await script.expect("RESUMED")
    await gms.agent(key, "fourth")
    result = await script.result()

    assert result["transport"] == transport
    old, new = result["clientIds"]
    assert old == first_client and new != old
    missed = [event("Message", AGENT, 4, "second"), event("Message", AGENT, 5, "third")]
    assert untimed(result["resumed"]) == notification(key, missed, 6)
    assert untimed(result["fourth"]) == notification(key, [event("Message", AGENT, 6, "fourth")], 7)
    indexes = [e["index"] for data in result["notifications"] for e in data["messages"]]
    assert indexes == [1, 2, 3, 4, 5, 6], "every event once, in order"
    assert result["left"]["chatEnded"] is True
