"""The agent API (GWS style: `/api/v2/me...` and CometD at `/api/v2/notifications`) and
chat routing: customers over Chat API v2 REST, agents over HTTP with their own cookie jars
and CometD long-polling."""

from __future__ import annotations

import asyncio

import pytest

from chat import cli
from chat.agent_api import ROUTER
from chat.agents import RoutingSettings, agent_credentials, hash_cli_agents
from chat.config import ChatConfig
from chat.passwords import hash_password
from tests.support.agent_desk import (
    WAITING,
    Env,
    agent_env,  # noqa: F401 (the env fixture)
    basic,
    chat_state,
    config,
    eventually,
    running,
)

# -- accounts and sessions -------------------------------------------------------------------


async def test_login_answers_the_agent_and_sets_a_session_cookie(env: Env) -> None:
    alice = env.agent("alice")
    body = await alice.login()
    assert body["statusCode"] == 0
    assert body["user"]["userName"] == "alice"
    assert body["user"]["channels"] == [{"channel": "chat", "userState": {"state": "LoggedOut"}}]
    # The cookie alone authenticates from now on.
    status, again = await alice.get("/api/v2/me")
    assert status == 200 and again["user"]["id"] == "alice"


async def test_a_bad_password_or_no_credentials_is_401(env: Env) -> None:
    mallory = env.agent("alice", password="wrong")
    headers = basic("alice", "wrong")
    async with mallory.http.get(mallory.url("/api/v2/me"), headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert await response.json() == {"statusCode": 20, "statusMessage": "Not authenticated"}
    assert "JSESSIONID" not in {c.key for c in mallory.http.cookie_jar}
    status, _ = await mallory.post("/api/v2/me", "StartContactCenterSession", channels=["chat"])
    assert status == 401
    unknown = env.agent("nobody", password="x")
    async with unknown.http.get(
        unknown.url("/api/v2/me"), headers=basic("nobody", "x")
    ) as response:
        assert response.status == 401


async def test_cometd_handshake_needs_an_agent_session(env: Env) -> None:
    stranger = env.agent("alice")
    (reply,) = await stranger.bayeux(
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        }
    )
    assert reply["successful"] is False


async def test_start_session_and_ready_are_announced_on_v2_me_channels(env: Env) -> None:
    alice = env.agent("alice")
    await alice.login()
    await alice.cometd()
    status, body = await alice.post("/api/v2/me/channels/chat", "Ready")
    assert (status, body["statusCode"]) == (400, 2)  # no contact center session yet
    await alice.ok("/api/v2/me", "StartContactCenterSession", channels=["chat"])
    await alice.ok("/api/v2/me/channels/chat", "Ready")
    states = []
    for _ in range(2):
        data = await alice.next(lambda d: d.get("messageType") == "ChannelStateChangeMessage")
        states.append(data["channels"][0]["userState"]["state"])
    assert states == ["NotReady", "Ready"]
    assert await alice.state() == "Ready"


async def test_operations_are_checked(env: Env) -> None:
    alice = env.agent("alice")
    await alice.login()
    status, body = await alice.post("/api/v2/me", "Dance")
    assert status == 400 and body["statusCode"] == 10 and "Dance" in body["statusMessage"]
    me, csrf = alice.url("/api/v2/me"), alice.headers()
    async with alice.http.post(me, data="{nope", headers=csrf) as response:
        assert response.status == 400 and (await response.json())["statusCode"] == 10
    async with alice.http.post(me, json={}, headers=csrf) as response:
        assert response.status == 400 and (await response.json())["statusCode"] == 1
    form = {"operationName": "StartContactCenterSession"}
    async with alice.http.post(me, data=form, headers=csrf) as response:
        assert response.status == 400 and (await response.json())["statusCode"] == 10


async def test_cometd_subscriptions_are_limited_to_v2_me_and_publishing_is_refused(
    env: Env,
) -> None:
    alice = env.agent("alice")
    await alice.login()
    await alice.cometd()
    (sub,) = await alice.bayeux({"channel": "/meta/subscribe", "subscription": "/other/**"})
    assert sub["successful"] is False
    (pub,) = await alice.bayeux({"channel": "/v2/me/chats", "data": {"forged": True}})
    assert pub["successful"] is False


# -- the whole chat ---------------------------------------------------------------------------


async def test_a_chat_from_request_to_complete(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer("Carl")

    chat_id = await alice.invitation()
    assert chat_id == customer.chat_id
    _, listed = await alice.get("/api/v2/me/chats")
    assert [(c["id"], c["state"]) for c in listed["chats"]] == [(chat_id, "Invited")]
    assert listed["chats"][0]["capabilities"] == ["Accept", "Reject"]
    status, body = await alice.chat_op(chat_id, "SendMessage", text="too early")
    assert (status, body["statusCode"]) == (400, 2)

    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    accepted = await alice.next(lambda d: chat_state(d) == "Accepted")
    assert [p["type"] for p in accepted["chat"]["participants"]] == ["Client", "Agent"]
    assert ("ParticipantJoined", "Agent", None) in await customer.events()

    await alice.ok(f"/api/v2/me/chats/{chat_id}", "StartTyping")
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "SendMessage", text="Hello Carl")
    assert ("Message", "Agent", "Hello Carl") in await customer.events()

    await customer.call("send", message="Hi, I need help")
    while True:
        messages = await alice.new_messages(chat_id)
        if any(m["type"] == "Message" and m["from"]["type"] == "Client" for m in messages):
            break
    assert messages[-1]["text"] == "Hi, I need help"

    status, detail = await alice.get(f"/api/v2/me/chats/{chat_id}")
    assert status == 200 and detail["chat"]["state"] == "Accepted"
    texts = [m.get("text") for m in detail["chat"]["messages"] if m["type"] == "Message"]
    assert texts == ["Hello Carl", "Hi, I need help"]

    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Complete")
    await alice.next(lambda d: chat_state(d) == "Completed")
    body = await customer.call("refresh")
    assert body["chatEnded"] is True
    _, listed = await alice.get("/api/v2/me/chats")
    assert listed["chats"] == []


async def test_leave_by_the_only_agent_ends_the_chat(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer()
    chat_id = await alice.invitation()
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Leave")
    await alice.next(lambda d: chat_state(d) == "Completed")
    assert (await customer.call("refresh"))["chatEnded"] is True


async def test_a_customer_leaving_revokes_the_offer(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer()
    chat_id = await alice.invitation()
    await customer.call("disconnect")
    revoked = await alice.next(lambda d: chat_state(d) == "Revoked")
    assert revoked["chat"]["id"] == chat_id
    status, _ = await alice.chat_op(chat_id, "Accept")
    assert status == 404


# -- routing ----------------------------------------------------------------------------------


async def test_reject_offers_the_chat_to_the_next_agent(env: Env) -> None:
    alice, bob = env.agent("alice"), env.agent("bob")
    await alice.ready()
    await bob.ready()  # alice has been idle longer: she gets the first offer
    customer = await env.customer()
    assert await alice.invitation() == customer.chat_id
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Reject")
    await alice.next(lambda d: chat_state(d) == "Revoked")
    assert await bob.invitation() == customer.chat_id
    status, _ = await alice.get(f"/api/v2/me/chats/{customer.chat_id}")
    assert status == 404


async def test_an_unanswered_offer_times_out_and_goes_to_the_next_agent() -> None:
    async with running(config(offer_timeout_s="0.3")) as env:
        alice, bob = env.agent("alice"), env.agent("bob")
        await alice.ready()
        await bob.ready()
        customer = await env.customer()
        assert await alice.invitation() == customer.chat_id
        await alice.next(lambda d: chat_state(d) == "Revoked")
        assert await bob.invitation() == customer.chat_id
        status, _ = await alice.chat_op(customer.chat_id, "Accept")
        assert status == 404


async def test_without_a_ready_agent_the_chat_waits_with_a_message(env: Env) -> None:
    customer = await env.customer()

    async def told() -> bool:
        return ("Message", "External", WAITING) in await customer.events()

    await eventually(told)
    alice = env.agent("alice")
    await alice.ready()  # the queued chat goes to the first agent to become Ready
    assert await alice.invitation() == customer.chat_id
    events = await customer.events()
    assert events.count(("Message", "External", WAITING)) == 1


async def test_not_ready_agents_get_no_offers(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    await alice.ok("/api/v2/me/channels/chat", "NotReady")
    customer = await env.customer()

    async def told() -> bool:
        return ("Message", "External", WAITING) in await customer.events()

    await eventually(told)
    await alice.no_invitation(0.3)


async def test_capacity_is_respected() -> None:
    async with running(config(max_chats="2")) as env:
        alice = env.agent("alice")
        await alice.ready()
        first, second, third = [await env.customer(f"c{i}") for i in range(3)]
        offered = {await alice.invitation(), await alice.invitation()}
        assert offered == {first.chat_id, second.chat_id}
        for chat_id in offered:
            await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")

        async def told() -> bool:
            return ("Message", "External", WAITING) in await third.events()

        await eventually(told)
        assert await alice.next(lambda d: chat_state(d) == "Accepted")
        assert await alice.next(lambda d: chat_state(d) == "Accepted")
        await alice.no_invitation(0.3)
        # Completing one frees a slot: the waiting chat is offered.
        await alice.ok(f"/api/v2/me/chats/{first.chat_id}", "Complete")
        assert await alice.invitation() == third.chat_id


async def test_an_agent_cannot_read_or_work_another_agents_chat(env: Env) -> None:
    alice, bob = env.agent("alice"), env.agent("bob")
    await alice.ready()
    await bob.login()
    customer = await env.customer()
    chat_id = await alice.invitation()
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    for operation in ("Accept", "SendMessage", "Complete"):
        status, body = await bob.chat_op(chat_id, operation, text="hijack")
        assert status == 404 and body == {"statusCode": 6, "statusMessage": "Chat not found"}
    status, body = await bob.get(f"/api/v2/me/chats/{chat_id}")
    assert status == 404
    _, listed = await bob.get("/api/v2/me/chats")
    assert listed["chats"] == []
    assert ("Message", "Agent", "hijack") not in await customer.events()


async def test_end_session_logs_out_and_drops_the_cookie(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    await alice.ok("/api/v2/me", "EndContactCenterSession")
    status, _ = await alice.get("/api/v2/me")
    assert status == 401
    assert (await alice.connect())["successful"] is False  # its CometD session ended too
    await alice.login()
    assert await alice.state() == "LoggedOut"


async def test_end_session_is_refused_while_the_agent_has_chats(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    await env.customer()
    chat_id = await alice.invitation()
    await alice.ok(f"/api/v2/me/chats/{chat_id}", "Accept")
    status, body = await alice.post("/api/v2/me", "EndContactCenterSession")
    assert (status, body["statusCode"]) == (400, 2)


# -- configuration ----------------------------------------------------------------------------


async def test_no_agent_exists_unless_configured() -> None:
    async with running(ChatConfig()) as env:
        alice = env.agent("alice")
        async with alice.http.get(
            alice.url("/api/v2/me"), headers=basic("alice", "alice-pw")
        ) as response:
            assert response.status == 401
        assert env.http.app is not None and env.http.app[ROUTER].names == []
        customer = await env.customer()
        await asyncio.sleep(0.1)
        assert await customer.events() == [("ParticipantJoined", "Client", None)]


def test_agent_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match=r"\[agents\] alice"):
        agent_credentials({"agents": {"alice": "clear-text-password"}})
    with pytest.raises(ValueError, match="max_chats"):
        RoutingSettings.from_sections({"routing": {"max_chats": "0"}})
    with pytest.raises(ValueError, match="unknown option"):
        RoutingSettings.from_sections({"routing": {"max_chat": "2"}})
    with pytest.raises(ValueError, match="USER:PASSWORD") as raised:
        hash_cli_agents(["alice"])
    assert "alice" not in str(raised.value).replace("--agent", "")


def test_cli_agents_are_hashed_and_win_over_the_config() -> None:
    hashes = hash_cli_agents(["dave:pa:ss"])
    assert set(hashes) == {"dave"} and hashes["dave"].startswith("pbkdf2_sha256$")
    assert "pa:ss" not in hashes["dave"]
    merged = agent_credentials({"agents": {"dave": hash_password("old", 1000)}}, hashes)
    assert merged["dave"] == hashes["dave"]


async def test_the_only_agent_rejecting_gets_the_chat_offered_again(env: Env) -> None:
    """Agents who declined come last, but when nobody else is free they are asked again."""
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer()
    assert await alice.invitation() == customer.chat_id
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Reject")
    assert await alice.invitation() == customer.chat_id


def test_cli_refuses_a_malformed_agent_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("alice", "alice:", ":secret"):
        with pytest.raises(SystemExit):
            cli.main(["--agent", flag])
        error = capsys.readouterr().err
        assert "--agent: expected USER:PASSWORD" in error and "secret" not in error
