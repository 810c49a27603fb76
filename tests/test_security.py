"""Security: the policy, channel authorizers, session binding to a browser, and leak checks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bayeux import (
    Authorization,
    BayeuxServer,
    Denied,
    Message,
    Operation,
    RequestContext,
    SecurityPolicy,
    ServerSession,
    ServiceRequest,
)
from bayeux import protocol as p
from tests.conftest import (
    LiveServer,
    PipelineClient,
    ServerFactory,
    assert_refused,
    connected_client,
)


class TokenPolicy(SecurityPolicy):
    """Handshakes need `ext.token`; `/private/**` needs the `member` role; `/readonly/**` may
    not be published to. The token names the user, bound to the session."""

    TOKENS = {"t-alice": ("alice", "member"), "t-bob": ("bob", "guest")}

    async def can_handshake(
        self, session: ServerSession, message: Message, context: RequestContext
    ) -> bool:
        ext = message.get("ext")
        token = ext.get("token") if isinstance(ext, dict) else None
        if token is None:
            return False
        if token not in self.TOKENS:
            raise Denied("invalid_token", reconnect=p.RECONNECT_HANDSHAKE)
        user, role = self.TOKENS[token]
        session.attributes["role"] = role
        await session.server.bind_user(session, user)
        return True

    async def can_subscribe(self, session: ServerSession, channel: str, message: Message) -> bool:
        if channel.startswith("/private/") and session.attributes.get("role") != "member":
            raise Denied("members_only")
        return await super().can_subscribe(session, channel, message)

    async def can_publish(self, session: ServerSession, channel: str, message: Message) -> bool:
        if channel.startswith("/readonly/"):
            return False
        return await super().can_publish(session, channel, message)


@pytest.fixture
async def secured(make_server: ServerFactory) -> BayeuxServer:
    return await make_server(security=TokenPolicy())


async def as_user(server: BayeuxServer, token: str) -> PipelineClient:
    return await connected_client(server, ext={"token": token})


# -- the security policy -----------------------------------------------------------------------


async def test_policy_returning_false_denies_the_handshake(secured: BayeuxServer) -> None:
    added: list[str] = []
    secured.on_session_added(lambda session, reason: added.append(session.id))
    reply = await PipelineClient(secured).handshake()
    assert_refused(reply, "403::handshake_denied", "none")
    assert "clientId" not in reply
    assert secured.sessions == {}
    assert added == []


async def test_policy_raising_denied_gives_its_reason_and_advice(secured: BayeuxServer) -> None:
    reply = await PipelineClient(secured).handshake(ext={"token": "forged"})
    assert_refused(reply, "403:invalid_token:handshake_denied", "handshake")
    assert secured.sessions == {}


async def test_policy_allows_a_valid_handshake_and_binds_its_user(secured: BayeuxServer) -> None:
    alice = await as_user(secured, "t-alice")
    assert {s.id for s in secured.user_sessions("alice")} == {alice.client_id}
    await secured.deliver_to_user("alice", "/user/alice", "welcome")
    assert await alice.poll() == [{"channel": "/user/alice", "data": "welcome"}]


async def test_a_handshake_denied_after_binding_a_user_leaves_no_session_behind(
    make_server: ServerFactory,
) -> None:
    class BindThenDeny(SecurityPolicy):
        async def can_handshake(
            self, session: ServerSession, message: Message, context: RequestContext
        ) -> bool:
            await session.server.bind_user(session, "mallory")
            raise Denied("account_locked")

    server = await make_server(security=BindThenDeny())
    reply = await PipelineClient(server).handshake()
    assert reply["error"] == "403:account_locked:handshake_denied"
    assert server.user_sessions("mallory") == set()


async def test_policy_denies_a_subscription_with_its_reason(secured: BayeuxServer) -> None:
    bob = await as_user(secured, "t-bob")
    reply = await bob.subscribe("/private/board")
    assert reply["successful"] is False
    assert reply["error"] == "403:members_only:subscribe_denied"
    assert reply["subscription"] == "/private/board"
    assert secured.sessions[bob.client_id or ""].subscriptions == set()
    alice = await as_user(secured, "t-alice")
    assert (await alice.subscribe("/private/board"))["successful"] is True


async def test_one_denied_pattern_denies_the_whole_subscribe(secured: BayeuxServer) -> None:
    bob = await as_user(secured, "t-bob")
    reply = await bob.subscribe(["/public", "/private/x"])
    assert reply["error"] == "403:members_only:subscribe_denied"
    assert secured.sessions[bob.client_id or ""].subscriptions == set()


async def test_policy_denies_a_publish_and_nothing_is_delivered(secured: BayeuxServer) -> None:
    alice = await as_user(secured, "t-alice")
    await alice.subscribe("/readonly/news")
    reply = await alice.publish("/readonly/news", "spam")
    assert reply["successful"] is False
    assert reply["error"] == "403:denied_by_security_policy:publish_denied"
    assert await alice.poll() == []


async def test_service_handler_raising_denied_refuses_the_publish(server: BayeuxServer) -> None:
    async def admin_only(request: ServiceRequest) -> None:
        raise Denied("admins_only")

    server.add_service("/service/admin", admin_only)
    client = await connected_client(server)
    reply = await client.publish("/service/admin", {"cmd": "shutdown"})
    assert (reply["successful"], reply["error"]) == (False, "403:admins_only:publish_denied")


# -- authorizers -------------------------------------------------------------------------------


def always(result: Authorization) -> Any:
    def authorizer(
        operation: Operation, channel: str, session: ServerSession, message: Message
    ) -> Authorization:
        return result

    return authorizer


GRANT, DENY, IGNORE = (always(a) for a in Authorization)


async def test_a_granting_authorizer_allows(server: BayeuxServer) -> None:
    server.add_authorizer("/chat", GRANT)
    client = await connected_client(server)
    assert (await client.subscribe("/chat"))["successful"] is True
    assert (await client.publish("/chat", 1))["successful"] is True


async def test_any_deny_wins_over_grants(server: BayeuxServer) -> None:
    server.add_authorizer("/chat", GRANT)
    server.add_authorizer("/chat", DENY)
    server.add_authorizer("/chat", GRANT)
    client = await connected_client(server)
    subscribe = await client.subscribe("/chat")
    assert subscribe["error"] == "403:denied_by_authorizer:subscribe_denied"
    publish = await client.publish("/chat", 1)
    assert publish["error"] == "403:denied_by_authorizer:publish_denied"


async def test_only_ignoring_authorizers_do_not_grant(server: BayeuxServer) -> None:
    server.add_authorizer("/chat", IGNORE)
    client = await connected_client(server)
    reply = await client.publish("/chat", 1)
    assert reply["error"] == "403:not_granted:publish_denied"
    assert (await client.subscribe("/chat"))["error"] == "403:not_granted:subscribe_denied"


async def test_one_grant_among_ignores_allows(server: BayeuxServer) -> None:
    server.add_authorizer("/chat", IGNORE)
    server.add_authorizer("/chat", GRANT)
    client = await connected_client(server)
    assert (await client.publish("/chat", 1))["successful"] is True


async def test_channels_without_applicable_authorizers_are_open(server: BayeuxServer) -> None:
    server.add_authorizer("/locked/**", DENY)
    client = await connected_client(server)
    assert (await client.publish("/open", 1))["successful"] is True
    assert (await client.publish("/locked", 1))["successful"] is True
    assert (await client.publish("/locked/room", 1))["successful"] is False


async def test_wildcard_attached_authorizers_apply_to_matching_channels(
    server: BayeuxServer,
) -> None:
    server.add_authorizer("/chat/**", GRANT)
    server.add_authorizer("/chat/*", DENY)
    client = await connected_client(server)
    assert (await client.publish("/chat/room/1", 1))["successful"] is True
    assert (await client.publish("/chat/room", 1))["error"] == (
        "403:denied_by_authorizer:publish_denied"
    )


async def test_authorizers_see_the_operation_channel_and_session(server: BayeuxServer) -> None:
    calls: list[tuple[Operation, str, str]] = []

    async def subscribe_only(
        operation: Operation, channel: str, session: ServerSession, message: Message
    ) -> Authorization:
        calls.append((operation, channel, session.id))
        return Authorization.GRANT if operation is Operation.SUBSCRIBE else Authorization.IGNORE

    server.add_authorizer("/feed/*", subscribe_only)
    client = await connected_client(server)
    assert (await client.subscribe("/feed/a"))["successful"] is True
    assert (await client.publish("/feed/a", 1))["error"] == "403:not_granted:publish_denied"
    assert calls == [
        (Operation.SUBSCRIBE, "/feed/a", client.client_id),
        (Operation.PUBLISH, "/feed/a", client.client_id),
    ]


async def test_authorizer_raising_denied_gives_its_reason(server: BayeuxServer) -> None:
    def quota(
        operation: Operation, channel: str, session: ServerSession, message: Message
    ) -> Authorization:
        raise Denied("quota_exceeded")

    server.add_authorizer("/**", quota)
    client = await connected_client(server)
    assert (await client.publish("/x", 1))["error"] == "403:quota_exceeded:publish_denied"


async def test_policy_denial_comes_before_authorizers(secured: BayeuxServer) -> None:
    secured.add_authorizer("/readonly/**", GRANT)
    alice = await as_user(secured, "t-alice")
    reply = await alice.publish("/readonly/x", 1)
    assert reply["error"] == "403:denied_by_security_policy:publish_denied"


# -- a session belongs to the browser that created it ------------------------------------------


async def test_another_browser_cannot_use_a_session_over_long_polling(
    server: BayeuxServer,
) -> None:
    victim = await connected_client(server)
    await victim.subscribe("/inbox")
    attacker = await connected_client(server)
    attacker.client_id = victim.client_id
    reply = await attacker.subscribe("/secrets")
    assert (reply["successful"], reply["error"]) == (False, "402::session_unknown")
    _, connect = await attacker.connect(advice={"timeout": 0})
    assert connect["error"] == "402::session_unknown"
    assert server.sessions[victim.client_id or ""].subscriptions == {"/inbox"}


async def test_another_browser_cannot_take_over_a_session_over_http(live: LiveServer) -> None:
    victim = await live.browser().connected()
    attacker = await live.browser().connected()
    attacker.client_id = victim.client_id
    [reply] = await attacker.connect(advice={"timeout": 0})
    assert reply["error"] == "402::session_unknown"
    [own] = await victim.connect(advice={"timeout": 0})
    assert own["successful"] is True


async def test_another_browser_cannot_take_over_a_session_over_websocket(live: LiveServer) -> None:
    victim = live.browser()
    await victim.ws_connected()
    for attacker in (live.browser(), live.browser()):
        socket = await attacker.websocket()
        attacker.client_id = victim.client_id
        reply = await socket.reply_to(await attacker.ws_connect(socket))
        assert reply["error"] == "402::session_unknown"
    assert victim.client_id in live.bayeux.sessions


async def test_broadcasts_never_carry_the_publishers_client_id(server: BayeuxServer) -> None:
    subscriber = await connected_client(server)
    await subscriber.subscribe("/room")
    publisher = await connected_client(server)
    await publisher.publish("/room", {"text": "hi"}, ext={"trace": "1"})
    [event] = await subscriber.poll()
    assert event == {"channel": "/room", "data": {"text": "hi"}, "ext": {"trace": "1"}}
    assert publisher.client_id is not None
    assert publisher.client_id not in orjson.dumps(event).decode()
