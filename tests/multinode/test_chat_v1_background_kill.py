"""Chat v1 background state across two `gms-server` nodes on one Redis, with one killed.

A mobile client (aiocometd-ng, `gms_user` header, `ext.transcriptPosition`) follows a chat
from node A that an agent serves on node B, goes to the background on A, and A is SIGKILLed.
The agent's next message arrives on B; the client-timeout timer (kept in Redis) fires on B,
the push reaches a local HTTP receiver, and the client, back on B, gets exactly the missed
events, then the live ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest
from yarl import URL

from tests.support.agent_desk import Agent
from tests.support.chat_v1 import Json, mobile_client, receive
from tests.support.processes import ServerProcess, bayeux_options, free_port
from tests.support.receiver import Receiver, receiver
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:aiohttp.client")

HOST = "localhost"  # aiocometd-ng keeps cookies only for host names
OPTIONS = {"timeout": 2000, "max_interval": 3000}


class Node:
    """What `Agent` needs of a server: URLs."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process

    def make_url(self, path: str) -> URL:
        return URL(self.process.base_url + path)

    @property
    def cometd(self) -> str:
        return self.process.base_url + "/genesys/cometd"


@contextmanager
def two_nodes(redis_server: RedisServer, config_file: Path) -> Iterator[tuple[Node, Node]]:
    """node A and node B on one Redis (flushed first), both with agent alice."""
    redis_server.client().flushall()
    processes = [
        ServerProcess(
            "chat",
            [
                *("--redis", redis_server.url, "--node-id", node_id),
                *("--config", str(config_file), "--agent", "alice:alice-pw"),
                *bayeux_options(OPTIONS),
            ],
            host=HOST,
            port=free_port(),
        )
        for node_id in ("node-a", "node-b")
    ]
    try:
        for process in processes:
            process.start()
        yield Node(processes[0]), Node(processes[1])
    finally:
        for process in processes:
            process.close()


def write_config(tmp_path: Path, push_url: str) -> Path:
    path = tmp_path / "gms.ini"
    path.write_text(
        "[push]\n"
        "pushEnabled = customhttp\n"
        f"customhttp.url = {push_url}\n"
        "[service.request-chat]\n"
        "_client_timeout_notification = 0.3\n"
    )
    return path


async def post_form(url: str, form: Json, gms_user: str) -> Json:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=form, headers={"gms_user": gms_user}) as response,
    ):
        body: Json = orjson.loads(await response.read())
        assert response.status == 200, body
        return body


async def agent_sees(agent: Agent, chat_id: str, text: str) -> None:
    async with asyncio.timeout(5):
        while True:
            _, body = await agent.get(f"/api/v2/me/chats/{chat_id}")
            if any(m.get("text") == text for m in body["chat"]["messages"]):
                return
            await asyncio.sleep(0.05)


def shown(message: Json) -> list[tuple[str, str]]:
    return [(r[0], r[2]) for r in message["data"]["message"]["transcriptToShow"]]


async def test_background_on_a_killed_node_is_pushed_and_replayed_on_another(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with receiver() as sink:
        config_file = write_config(tmp_path, f"{sink.url}/push")
        with two_nodes(redis_server, config_file) as (node_a, node_b):
            await background_then_back(node_a, node_b, sink)


async def background_then_back(node_a: Node, node_b: Node, sink: Receiver) -> None:
    """The scenario, with both nodes up and the receiver listening."""
    agent = Agent(node_b, "alice")  # type: ignore[arg-type]  # a Node serves its URLs
    try:
        await agent.ready()
        service_url = node_b.process.base_url + "/genesys/1/service"
        service_id = (await post_form(f"{service_url}/request-chat", {}, "joan"))["_id"]
        form = {
            "userDisplayName": "Joan",
            "notify_by": "comet",
            "push_notification_deviceid": "phone-1",
            "push_notification_type": "customhttp",
        }
        started = await post_form(f"{service_url}/{service_id}/ixn/chat", form, "joan")
        chat_id = started["chatSessionId"]

        async with mobile_client(node_a.cometd, "joan") as (client, app):
            assert await agent.invitation() == chat_id
            await agent.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
            await agent.ok(f"/api/v2/me/chats/{chat_id}", "SendMessage", text="hello")
            joined, hello = await receive(client), await receive(client)
            assert shown(joined) == [("Notice.Joined", "has joined the session")]
            assert shown(hello) == [("Message.Text", "hello")]
            app.leave_at = 3  # to the background, on node A
        await agent_sees(agent, chat_id, "customer is not online")
        node_a.process.kill()

        await agent.ok(f"/api/v2/me/chats/{chat_id}", "SendMessage", text="are you there?")
        [push] = await sink.wait_for(1, timeout=10)
        body = push.json()
        assert body["deviceId"] == "phone-1"
        assert orjson.loads(body["message"]) == {
            "message": "New message from Agent",
            "serviceId": service_id,
            "lastTranscript": [{"Message.Text": "are you there?"}],
        }

        async with mobile_client(node_b.cometd, "joan", resume_from=3) as (client, _):
            missed = await receive(client)
            assert shown(missed) == [("Message.Text", "are you there?")]
            assert missed["data"]["message"]["transcriptPosition"] == "5"
            await agent.ok(f"/api/v2/me/chats/{chat_id}", "SendMessage", text="welcome back")
            live = await receive(client)
            assert shown(live) == [("Message.Text", "welcome back")]
            assert live["data"]["message"]["transcriptPosition"] == "6"
        assert len(sink.requests) == 1
    finally:
        await agent.close()
