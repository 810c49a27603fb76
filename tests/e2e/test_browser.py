"""End to end: the customer chat page (`/chat`) and the agent desk (`/desk`) in a real headless
Chromium (Debian's `chromium`, driven by npm `playwright-core` in Node: browser.mjs beside this
file) against a real `gms-server` process.

Never skipped: a missing Chromium, Node or npm package fails the test with what to install
(scripts/test installs them all). `GMS_E2E_SCREENSHOTS=docs/screenshots` makes the conversation
test also write PNGs of both pages mid-chat there (committed once, not taken on every run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.web_pages import COMETD_DIR
from tests.support.processes import REPO_ROOT, ServerProcess, node_executable, run_node

E2E = Path(__file__).resolve().parent
SCRIPT = E2E / "browser.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
AGENT, PASSWORD = "demo", "demo-secret"
SCRIPT_TIMEOUT = 120.0

Facts = dict[str, Any]


def require_browser() -> None:
    """Fails (never skips) with the missing piece and how to get it."""
    if node_executable() is None:
        pytest.fail("node is not on PATH: the browser tests need Node.js >= 20 (see scripts/test)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium is not at {CHROMIUM}: `apt-get install -y chromium` (scripts/test does)"
        )
    if not (E2E / "node_modules" / "playwright-core" / "package.json").is_file():
        pytest.fail(f"playwright-core is not installed: run `cd {E2E} && npm ci`")
    if not (COMETD_DIR / "package.json").is_file():
        pytest.fail(
            f"the CometD client is not installed: run `cd {COMETD_DIR.parents[1]} && npm ci`"
        )


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    """A fresh server per test (agents' states are the server's memory)."""
    require_browser()
    agents = [f"{AGENT}:{PASSWORD}", f"{AGENT}2:{PASSWORD}"]
    args = [arg for agent in agents for arg in ("--agent", agent)]
    with ServerProcess("chat", [*args, "--option", "timeout=5000"]) as process:
        yield process


def browse(server: ServerProcess, scenario: str, *extra: str) -> Facts:
    args = [scenario, server.base_url, AGENT, PASSWORD, *extra]
    try:
        return run_node(SCRIPT, args, timeout=SCRIPT_TIMEOUT)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server output ---\n{server.output()}") from None


def screenshot_dir() -> list[str]:
    target = os.environ.get("GMS_E2E_SCREENSHOTS")
    if not target:
        return []
    path = (REPO_ROOT / target).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return [str(path)]


def test_conversation_both_ways_through_reloads_and_a_network_drop(
    server: ServerProcess,
) -> None:
    facts = browse(server, "conversation", *screenshot_dir())
    assert facts["pageErrors"] == []
    assert facts["customerTransport"] == "CometD over websocket"
    assert facts["deskTransport"] == "CometD over websocket"
    assert facts["typingClearedOnMessage"] is True
    # The desk reloaded mid-chat: the same chat, the same lines, in order; still Ready.
    assert facts["deskLinesBeforeReload"][:2] == ["Ann joined the chat", f"{AGENT} joined the chat"]
    assert facts["deskLinesAfterReload"] == facts["deskLinesBeforeReload"]
    assert facts["deskStateAfterReload"] == "Ready"
    # So did the customer's page.
    assert facts["customerLinesBeforeReload"][-1].endswith("Good")
    assert facts["customerLinesAfterReload"] == facts["customerLinesBeforeReload"]
    # The network dropped: nothing came meanwhile, everything came after, once, in order.
    assert facts["customerSawWhileOffline"] is False
    expected = [
        "Hello, my parcel",
        "Let me check",
        "Order 1234",
        "Still here after a reload",
        "Good",
        "I reloaded the page",
        "Are you there?",
        "Your parcel arrives tomorrow",
        "Back again",
    ]
    assert facts["customerMessages"] == expected
    assert facts["deskMessages"] == expected
    # Two chats at once, each customer seeing only their own.
    assert [tab[:3] for tab in facts["tabs"]] == ["Ann", "Bob"]
    assert facts["bobMessages"] == ["Hi Bob", "Hi, a question about my bill"]
    assert facts["annMessagesWithBobAround"] == [*expected, "Anything else, Ann?"]
    # The agent completed the chats.
    assert facts["customerAfterEnd"] == "The chat has ended."
    assert facts["customerCanStartAgain"] is True


def test_agent_transfers_a_chat_to_another_agent(server: ServerProcess) -> None:
    facts = browse(server, "transfer")
    # The only error a page saw: the answer to a wrong password (the page then said so).
    assert facts["pageErrors"] == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    assert facts["firstDeskTransport"] == "CometD over long-polling"  # CSRF header on polls
    messages = ["Let me pass you to a colleague", "Hello, I handle returns", "Thanks"]
    assert facts["customerMessages"] == messages
    assert facts["secondDeskMessages"] == messages
    lines = facts["customerLines"]
    assert lines.index(f"{AGENT} left the chat") < lines.index(f"{AGENT}2 joined the chat")


def test_agent_rejects_holds_releases_and_sends_a_link(server: ServerProcess) -> None:
    facts = browse(server, "controls")
    # The only error a page saw: the 401 that told the desk its session had ended.
    assert facts["pageErrors"] == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    # Rejected, the chat came back to the only Ready agent; rejected again when another agent
    # was Ready, it left the first desk and went to that one.
    assert facts["invitationButtons"] == ["Accept", "Reject"]
    assert facts["firstDeskInvitationsAfterFirstReject"] == 1
    assert facts["firstDeskInvitationsAfterReject"] == 0
    # The controls follow the chat's capabilities.
    accepted = ["Send", "Send link", "Place on hold", "Transfer", "Complete"]
    assert facts["controlsAccepted"] == accepted
    assert facts["stateAccepted"] == "Active"
    assert facts["controlsOnHold"] == ["Release hold", "Transfer", "Complete"]
    assert facts["stateOnHold"] == "On hold"
    assert facts["focusOnHold"] == "Release hold"  # the keyboard user's button went away
    assert facts["controlsReleased"] == accepted
    # Both sides saw the hold, and messages flowed both ways during and after it.
    agent = f"{AGENT}2"
    lines = facts["customerLines"]

    def at(end: str) -> int:
        return next(i for i, line in enumerate(lines) if line.endswith(end))

    held, back = at(f"{agent} put the chat on hold"), at(f"{agent} is back")
    assert held < at("Still there?") < back < at("Yes, back now") < at("Good")
    assert lines[-1] == f"{agent} shared a link: https://example.com/refunds?order=42&lang=en"
    assert facts["deskLines"] == lines
    assert facts["customerLink"] == {
        "href": "https://example.com/refunds?order=42&lang=en",
        "target": "_blank",
        "rel": "noopener noreferrer",
    }
    assert facts["linkFieldAfterSending"] == ""
    # A desk whose session had ended showed its own log-in form, and logged in again.
    assert facts["statusAfterSessionEnded"] == "Your session has ended. Please log in again."
    assert facts["stateAfterLoggingInAgain"] == "Ready"  # the server kept the agent's state
