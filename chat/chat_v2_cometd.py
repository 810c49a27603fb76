"""GMS Chat API v2 over CometD: operations published on `/service/chatV2/{serviceName}`."""

from __future__ import annotations

from bayeux import BayeuxServer

from .engine import ChatEngine


def setup(bayeux: BayeuxServer, chat: ChatEngine) -> None:
    """Register the `/service/chatV2/*` service and the notifier that delivers chat events
    to the bound CometD client."""
