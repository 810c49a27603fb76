"""Push notifications for Chat v2 CometD chats (GMS 8.5.114+): mobile apps that went to the
background learn of new agent messages through FCM, APNs or a custom HTTP service.

A chat pushes when its CometD `requestChat` (or a later `requestNotifications`) carried
`push_notification_deviceid` and `push_notification_type`. Only the seven documented event
types are pushed, never the client's own events nor hidden ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

import orjson

from . import model as m
from .config import ChatConfig
from .engine import Cause
from .model import ChatSession, Event
from .push import PushError, PushMessage, PushService, texts

log = logging.getLogger("gms.chat.push")

CHAT_PUSH_TYPES = ("fcm", "ios", "customhttp")
MAX_PENDING = 10_000

DEFAULT_TEXTS = {
    m.PARTICIPANT_JOINED: ("Chat participants changed", "%s joined chat"),
    m.PARTICIPANT_LEFT: ("Chat participants changed", "%s left chat"),
    m.MESSAGE: ("%s sent new message", None),
    m.PUSH_URL: ("%s suggests Web page", None),
    m.FILE_UPLOADED: ("%s suggests to download file", "Open app for more info"),
    m.IDLE_ALERT: ("Chat will close soon", "Please use app if you want to continue"),
    m.IDLE_CLOSE: ("Chat is over", "Your chat session was ended due to inactivity"),
}
"""Title and body per pushable event; None: the event's own text (message, URL)."""


class ChatPushNotifier:
    """A chat observer that pushes each new pushable event, in order, in the background."""

    def __init__(
        self,
        config: ChatConfig,
        push: PushService,
        connected: Callable[[ChatSession], bool],
    ) -> None:
        self.config = config
        self.push = push
        self.connected = connected
        """Whether the chat has an active CometD client (`push_notification_to_active_client`)."""
        self._pending: set[asyncio.Task[None]] = set()

    async def chat_events(self, session: ChatSession, events: list[Event], cause: Cause) -> None:
        target = push_target(session)
        if target is None:
            return
        if self.config.push_to_active_client(session.service) and self.connected(session):
            return
        for event in events:
            if pushable(event):
                self._spawn(self._send(session, event, *target))

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        if len(self._pending) >= MAX_PENDING:
            log.warning("push backlog full: dropping a chat push")
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(
        self, session: ChatSession, event: Event, push_type: str, device: str, provider: str | None
    ) -> None:
        event_key = f"chat.{session.service}.{event.type}"
        options = self.push.options(provider, event_key)
        default_title, default_body = DEFAULT_TEXTS[event.type]
        title, body = texts(
            options,
            push_type,
            default_title,
            default_body or event.text or "",
            event.party.nickname,
        )
        payload = {
            "title": title,
            "body": body,
            "service": session.service,
            "event": event.to_wire(),
            "chatEnded": session.ended,
        }
        message = PushMessage(
            type=push_type,
            device_id=device,
            message=orjson.dumps(payload).decode(),
            title=title,
            body=body,
            debug=(session.push or {}).get("push_notification_debug", "false").lower() == "true",
        )
        try:
            await self.push.send(message, provider, event_key)
        except PushError as exc:
            log.warning("chat %s: push of event %d failed: %s", session.chat_id, event.index, exc)


def push_target(session: ChatSession) -> tuple[str, str, str | None] | None:
    """(type, device id, provider) when this chat pushes, else None."""
    keys = session.push or {}
    push_type = keys.get("push_notification_type")
    device = keys.get("push_notification_deviceid")
    if session.origin != "cometd" or not device or push_type not in CHAT_PUSH_TYPES:
        return None
    return push_type, device, keys.get("push_notification_provider") or None


def pushable(event: Event) -> bool:
    return event.visible and event.party.type != m.CLIENT and event.type in DEFAULT_TEXTS


def push_keys(user_data: dict[str, str]) -> dict[str, str] | None:
    """The `push_notification_*` keys of a chat's user data, or None without a device id."""
    keys = {k: v for k, v in user_data.items() if k.startswith("push_notification_")}
    return keys if keys.get("push_notification_deviceid") else None
