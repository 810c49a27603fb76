"""Chat API v2 over CometD (spec-chat-v2 §5) for tests: the notifications a GMS CometD client
is expected to receive, in the default mode (bogus ids), for a chat of customer Joan and
agent Ann."""

from __future__ import annotations

from typing import Any

Data = dict[str, Any]

CLIENT = {"nickname": "Joan", "participantId": 1, "type": "Client"}
AGENT = {"nickname": "Ann", "participantId": 2, "type": "Agent"}
BOGUS = {"alias": "0", "userId": "deprecated", "chatId": "deprecated"}
"""What the default mode sends in place of the alias, user id and chat id."""
DISCONNECT_REPLY = {
    "messages": [],
    "chatEnded": True,
    "statusCode": 0,
    "alias": "0",
    "chatId": "deprecated",
    "nextPosition": 1,
    "monitored": False,
}
"""The reply to the client's disconnect: no secure key nor user id."""


def event(kind: str, party: Data, index: int, text: str | None = None, **extra: Any) -> Data:
    """A transcript event as notifications carry it (without `utcTime`)."""
    wire: Data = {"from": party, "index": index, "type": kind}
    if text is not None:
        wire["text"] = text
    if kind == "Message":
        wire["messageType"] = None
    return wire | extra


def notification(key: str | None, messages: list[Data], next_position: int, **fields: Any) -> Data:
    """A successful reply or notification in the default (bogus ids) mode."""
    return {
        "messages": messages,
        "chatEnded": False,
        "statusCode": 0,
        **BOGUS,
        "secureKey": key,
        "nextPosition": next_position,
        "monitored": False,
    } | fields


def question_and_answer(key: str) -> list[Data]:
    """What the client receives in the interop scripts' "flow": it joins, asks "I have a
    question", the agent joins and answers "How can I help?", the client disconnects."""
    joined = {"from": CLIENT, "index": 1, "type": "ParticipantJoined"}
    agent_joined = {"from": AGENT, "index": 3, "type": "ParticipantJoined"}
    return [
        notification(key, [joined], 2),
        notification(key, [event("Message", CLIENT, 2, "I have a question")], 3),
        notification(key, [agent_joined], 4),
        notification(key, [event("Message", AGENT, 4, "How can I help?")], 5),
        DISCONNECT_REPLY,
    ]
