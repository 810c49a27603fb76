"""`gms_user` binding: `/_genesys` notifications reach only that user's sessions."""

from __future__ import annotations

from bayeux.app import BAYEUX_SERVER
from chat.app import create_app
from chat.gms_user import notify_gms_user
from tests.conftest import PipelineClient


async def test_notifications_reach_every_session_of_that_user_only() -> None:
    app = create_app()
    bayeux = app[BAYEUX_SERVER]
    await bayeux.start()
    try:
        clients = []
        for user in ("alice", "alice", "bob"):
            client = PipelineClient(bayeux)
            client.context.headers = {"gms_user": user}
            await client.handshake()
            await client.connect()
            await client.subscribe("/_genesys")
            clients.append(client)
        ext_client = PipelineClient(bayeux)
        await ext_client.handshake(ext={"gms_user": "alice"})
        await ext_client.connect()
        await notify_gms_user(bayeux, "alice", {"id": "1", "message": "hi", "tag": "t"})
        expected = [{"channel": "/_genesys", "data": {"id": "1", "message": "hi", "tag": "t"}}]
        assert await clients[0].poll() == expected
        assert await clients[1].poll() == expected
        assert await ext_client.poll() == expected
        assert await clients[2].poll() == []
        denied = await clients[2].publish("/_genesys", {"message": "spoof"})
        assert denied["successful"] is False
        assert denied["error"].endswith("publish_denied")
        assert await clients[0].poll() == []
    finally:
        await bayeux.close()
