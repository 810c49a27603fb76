"""The agent API's chat operations beyond the basics (SendUrl, SendCustomNotice, hold,
transfer, capabilities), the agent list, the logout timeout and CSRF tokens; customers over
Chat API v2 REST, agents over HTTP with CometD long-polling."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import aiohttp
import pytest

from chat import cli
from chat.agent_api import ApiSettings
from chat.agents import RoutingSettings
from tests.support.agent_desk import (
    Agent,
    Customer,
    Env,
    Json,
    agent_env,  # noqa: F401 (the env fixture)
    basic,
    chat_state,
    config,
    running,
)

URL = "https://shop.example.com/help"


async def alice_with_a_chat_and_bob_ready(env: Env) -> tuple[Agent, Agent, Customer]:
    """alice Ready with an accepted chat, then bob Ready (a chat can go to him)."""
    alice, bob = env.agent("alice"), env.agent("bob")
    await alice.ready()
    customer = await env.accepted_chat(alice)
    await bob.ready()
    return alice, bob, customer


async def leave_reasons(customer: Customer) -> list[tuple[str, str | None]]:
    """(participant type, reason-for-leave) of every ParticipantLeft the customer sees."""
    body = await customer.call("refresh", transcriptPosition="1")
    assert body["chatEnded"] is False
    return [
        (
            m["from"]["type"],
            m.get("eventAttributes", {}).get("general-properties", {}).get("reason-for-leave"),
        )
        for m in body["messages"]
        if m["type"] == "ParticipantLeft"
    ]


async def agents_joined(customer: Customer) -> list[str]:
    body = await customer.call("refresh", transcriptPosition="1")
    return [
        m["from"]["nickname"]
        for m in body["messages"]
        if m["type"] == "ParticipantJoined" and m["from"]["type"] == "Agent"
    ]


async def listed(agent: Agent) -> list[tuple[str, str, list[str]]]:
    status, body = await agent.get("/api/v2/me/chats")
    assert status == 200
    return [(c["id"], c["state"], c["capabilities"]) for c in body["chats"]]


# -- SendUrl, SendCustomNotice, capabilities -------------------------------------------------


async def test_send_url_and_custom_notice_reach_the_customer(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.accepted_chat(alice)
    chat = f"/api/v2/me/chats/{customer.chat_id}"
    await alice.ok(chat, "SendUrl", pushUrl=URL)
    await alice.ok(chat, "SendCustomNotice", text="order #42 shipped")
    events = await customer.events()
    assert ("PushUrl", "Agent", URL) in events
    assert ("CustomNotice", "Agent", "order #42 shipped") in events
    for fields, code in (({}, 1), ({"pushUrl": "javascript:alert(1)"}, 10)):
        status, body = await alice.chat_op(customer.chat_id, "SendUrl", **fields)
        assert (status, body["statusCode"]) == (400, code), body
    status, body = await alice.chat_op(customer.chat_id, "SendCustomNotice")
    assert (status, body) == (400, {"statusCode": 1, "statusMessage": "Missing parameter text"})


async def test_capabilities_follow_the_chat_state(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.customer()
    invited = await alice.next(lambda d: chat_state(d) == "Invited")
    assert invited["chat"]["capabilities"] == ["Accept", "Reject"]
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Accept")
    accepted = await alice.next(lambda d: chat_state(d) == "Accepted")
    capabilities = accepted["chat"]["capabilities"]
    for operation in ("SendMessage", "SendUrl", "SendCustomNotice", "PlaceOnHold", "Transfer"):
        assert operation in capabilities
    assert "ReleaseHold" not in capabilities and "Accept" not in capabilities
    status, body = await alice.chat_op(customer.chat_id, "ReleaseHold")
    assert status == 400 and body["statusCode"] == 2 and "Accepted" in body["statusMessage"]


# -- hold ---------------------------------------------------------------------------------------


async def test_place_on_hold_keeps_the_chat_and_release_hold_joins_again(env: Env) -> None:
    alice = env.agent("alice")
    await alice.ready()
    customer = await env.accepted_chat(alice)
    chat = f"/api/v2/me/chats/{customer.chat_id}"

    await alice.ok(chat, "PlaceOnHold")
    held = await alice.next(lambda d: chat_state(d) == "OnHold")
    assert held["chat"]["capabilities"] == ["ReleaseHold", "Transfer", "Complete"]
    assert await leave_reasons(customer) == [("Agent", "HOLD")]
    assert await listed(alice) == [(customer.chat_id, "OnHold", held["chat"]["capabilities"])]
    status, body = await alice.chat_op(customer.chat_id, "SendMessage", text="still there?")
    assert (status, body["statusCode"]) == (400, 2)

    await customer.call("send", message="take your time")  # the owner still hears it
    assert await alice.client_message(customer.chat_id) == "take your time"

    await alice.ok(chat, "ReleaseHold")
    await alice.next(lambda d: chat_state(d) == "Accepted")
    assert await agents_joined(customer) == ["alice", "alice"]
    await alice.ok(chat, "SendMessage", text="back")
    assert ("Message", "Agent", "back") in await customer.events()


# -- transfer -----------------------------------------------------------------------------------


async def test_transfer_to_an_agent_offers_the_chat_and_the_target_joins(env: Env) -> None:
    alice, bob, customer = await alice_with_a_chat_and_bob_ready(env)

    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Transfer", agent="bob")
    done = await alice.next(lambda d: chat_state(d) == "Completed")
    assert done["chat"]["id"] == customer.chat_id
    assert await listed(alice) == []
    assert await leave_reasons(customer) == [("Agent", "TRANSFER")]

    assert await bob.invitation() == customer.chat_id
    await bob.ok(f"/api/v2/me/chats/{customer.chat_id}", "Accept")
    await bob.next(lambda d: chat_state(d) == "Accepted")
    assert await agents_joined(customer) == ["alice", "bob"]
    status, _ = await alice.chat_op(customer.chat_id, "SendMessage", text="hi")
    assert status == 404


async def test_transfer_to_an_unavailable_agent_is_refused_and_the_chat_stays(env: Env) -> None:
    alice, bob = env.agent("alice"), env.agent("bob")
    await alice.ready()
    customer = await env.accepted_chat(alice)
    await bob.login()
    await bob.ok("/api/v2/me", "StartContactCenterSession", channels=["chat"])  # NotReady
    cases: list[tuple[dict[str, Any], str]] = [
        ({"agent": "bob"}, "Agent bob is not Ready"),
        ({"agent": "carol"}, "Agent carol is not Ready"),  # logged out
        ({"agent": "zed"}, "No agent zed"),
        ({"agent": "alice"}, "A chat cannot be transferred to yourself"),
        ({"queue": "no-such-service"}, "No chat service no-such-service"),
        ({"agent": "bob", "queue": "customer-support"}, "not both"),
        ({"agent": 7}, "agent must be a non-empty string"),
    ]
    for fields, message in cases:
        status, body = await alice.chat_op(customer.chat_id, "Transfer", **fields)
        assert status == 400 and message in body["statusMessage"], (fields, body)
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "SendMessage", text="still mine")
    assert await leave_reasons(customer) == []


async def test_transfer_to_a_full_agent_is_refused() -> None:
    async with running(config(max_chats="1")) as env:
        alice, bob, first = await alice_with_a_chat_and_bob_ready(env)
        await env.accepted_chat(bob)
        status, body = await alice.chat_op(first.chat_id, "Transfer", agent="bob")
        assert (status, body["statusMessage"]) == (400, "Agent bob has no free capacity")


async def test_a_rejected_transfer_goes_back_to_the_queue(env: Env) -> None:
    alice, bob, customer = await alice_with_a_chat_and_bob_ready(env)
    carol = env.agent("carol")
    await carol.ready()
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Transfer", agent="bob")
    assert await bob.invitation() == customer.chat_id
    await bob.ok(f"/api/v2/me/chats/{customer.chat_id}", "Reject")
    # Queued again: alice (who transferred) and bob (who rejected) come last.
    assert await carol.invitation() == customer.chat_id


async def test_transfer_to_the_queue_offers_the_chat_to_another_agent(env: Env) -> None:
    alice, bob, customer = await alice_with_a_chat_and_bob_ready(env)
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Transfer", queue="customer-support")
    assert await bob.invitation() == customer.chat_id
    assert await leave_reasons(customer) == [("Agent", "TRANSFER")]
    await alice.next(lambda d: chat_state(d) == "Completed")


async def test_a_held_chat_can_be_transferred(env: Env) -> None:
    alice, bob, customer = await alice_with_a_chat_and_bob_ready(env)
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "PlaceOnHold")
    await alice.ok(f"/api/v2/me/chats/{customer.chat_id}", "Transfer")
    assert await bob.invitation() == customer.chat_id
    assert await leave_reasons(customer) == [("Agent", "HOLD")]  # no second leave


# -- the agent list -----------------------------------------------------------------------------


async def test_agents_lists_every_agent_with_its_state(env: Env) -> None:
    alice, bob = env.agent("alice"), env.agent("bob")
    await alice.ready()
    await bob.login()
    status, body = await bob.get("/api/v2/agents")
    assert status == 200
    assert body["agents"] == [
        {"id": "alice", "userName": "alice", "state": "Ready", "available": True},
        {"id": "bob", "userName": "bob", "state": "LoggedOut", "available": False},
        {"id": "carol", "userName": "carol", "state": "LoggedOut", "available": False},
    ]
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(bob.url("/api/v2/agents")) as response,
    ):
        assert response.status == 401


# -- logout timeout -----------------------------------------------------------------------------


async def test_an_agent_without_cometd_for_the_logout_timeout_is_logged_out() -> None:
    async with running(config(logout_timeout_s="0.3")) as env:
        alice, bob, customer = await alice_with_a_chat_and_bob_ready(env)
        await alice.disconnect()
        await alice.until_state("LoggedOut")
        assert await leave_reasons(customer) == [("Agent", "TRANSFER")]
        assert await bob.invitation() == customer.chat_id
        assert await listed(alice) == []


async def test_a_session_back_within_the_logout_timeout_keeps_the_agent() -> None:
    async with running(config(logout_timeout_s="0.5")) as env:
        alice = env.agent("alice")
        await alice.ready()
        customer = await env.accepted_chat(alice)
        await alice.disconnect()
        await alice.cometd()  # a reload: a new CometD session at once
        await asyncio.sleep(0.9)
        assert await alice.state() == "Ready"
        assert await leave_reasons(customer) == []


async def test_an_agent_who_never_opens_cometd_is_logged_out() -> None:
    async with running(config(logout_timeout_s="0.2")) as env:
        alice = env.agent("alice")
        await alice.login()
        await alice.ok("/api/v2/me", "StartContactCenterSession", channels=["chat"])
        await alice.until_state("LoggedOut")


# -- CSRF ---------------------------------------------------------------------------------------


async def raw_post(agent: Agent, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Json]:
    async with agent.http.post(agent.url(path), json=body, headers=headers) as response:
        return response.status, dict(await response.json())


async def test_csrf_token_comes_with_gets_and_posts_must_carry_it(env: Env) -> None:
    alice = env.agent("alice")
    headers = basic("alice", "alice-pw")
    async with alice.http.get(alice.url("/api/v2/me"), headers=headers) as response:
        assert response.headers["X-CSRF-HEADER"] == "X-CSRF-TOKEN"
        token = response.headers["X-CSRF-TOKEN"]
    status, _ = await alice.get("/api/v2/me")  # with the cookie: the same token
    assert status == 200 and alice.csrf == token

    start = {"operationName": "StartContactCenterSession", "channels": ["chat"]}
    status, body = await raw_post(alice, "/api/v2/me", start, {})
    assert status == 403 and body["statusCode"] == 3
    assert "CSRF token is missing" in body["statusMessage"]
    status, body = await raw_post(alice, "/api/v2/me", start, {"X-CSRF-TOKEN": "forged"})
    assert status == 403 and "CSRF token is wrong" in body["statusMessage"]
    handshake = [{"channel": "/meta/handshake", "version": "1.0", "id": "1"}]
    status, _ = await raw_post(alice, "/api/v2/notifications", handshake, {})
    assert status == 403
    assert await alice.state() == "LoggedOut"  # nothing was done

    status, _ = await raw_post(alice, "/api/v2/me", start, {"X-CSRF-TOKEN": token})
    assert status == 200
    await alice.cometd()  # the helper sends the token with Bayeux POSTs


async def test_an_unknown_or_oversized_session_cookie_is_not_authenticated(env: Env) -> None:
    alice = env.agent("alice")
    for cookie in ("forged", "x" * 1000):
        alice.http.cookie_jar.update_cookies({"JSESSIONID": cookie})
        status, body = await alice.get("/api/v2/me")
        assert (status, body["statusCode"]) == (401, 20)
        status, _ = await alice.post("/api/v2/me", "StartContactCenterSession")
        assert status == 401


async def test_a_new_login_has_a_new_token_and_logout_ends_the_old_one(env: Env) -> None:
    alice = env.agent("alice")
    await alice.login()
    first = alice.csrf
    await alice.ok("/api/v2/me", "EndContactCenterSession")
    await alice.login()
    assert alice.csrf != first
    status, _ = await raw_post(
        alice, "/api/v2/me", {"operationName": "Dance"}, {"X-CSRF-TOKEN": first or ""}
    )
    assert status == 403


async def test_basic_auth_without_a_session_cookie_needs_no_csrf_token(env: Env) -> None:
    alice = env.agent("alice")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as script:
        start = {"operationName": "StartContactCenterSession", "channels": ["chat"]}
        url = alice.url("/api/v2/me")
        async with script.post(url, json=start, headers=basic("alice", "alice-pw")) as response:
            assert response.status == 200
            assert await response.json() == {"statusCode": 0}
        chats = alice.url("/api/v2/me/chats")
        async with script.get(chats, headers=basic("alice", "alice-pw")) as response:
            assert response.status == 200 and "X-CSRF-TOKEN" not in response.headers


async def test_csrf_can_be_turned_off() -> None:
    cfg = config()
    cfg.sections["agent-api"] = {"csrf": "false"}
    async with running(cfg) as env:
        alice = env.agent("alice")
        await alice.login()
        assert alice.csrf is None
        await alice.ok("/api/v2/me", "StartContactCenterSession", channels=["chat"])
        await alice.cometd()


def test_agent_api_and_routing_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"\[agent-api\]: unknown option 'cfrs'"):
        ApiSettings.from_sections({"agent-api": {"cfrs": "false"}})
    assert ApiSettings.from_sections({}).csrf is True
    with pytest.raises(ValueError, match=r"\[agent-api\] session_timeout_s: expected a number"):
        ApiSettings.from_sections({"agent-api": {"session_timeout_s": "soon"}})
    assert ApiSettings.from_sections({}).session_timeout_s == 8 * 3600
    with pytest.raises(ValueError, match="logout_timeout_s: expected a number > 0"):
        RoutingSettings.from_sections({"routing": {"logout_timeout_s": "0"}})
    assert RoutingSettings.from_sections({}).logout_timeout_s == 60


def test_cli_refuses_a_bad_agent_api_section(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = tmp_path / "gms.ini"
    ini.write_text("[agent-api]\ncsrf = false\nsecret = 1\n")
    with pytest.raises(SystemExit):
        cli.main(["--config", str(ini)])
    assert "[agent-api]: unknown option 'secret'" in capsys.readouterr().err
