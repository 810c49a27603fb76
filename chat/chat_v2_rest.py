"""GMS Chat API v2 over REST: `/genesys/2/chat/{serviceName}[/{chatId}/...]`."""

from __future__ import annotations

from aiohttp import web

from .engine import ChatEngine


def setup(app: web.Application, chat: ChatEngine) -> None:
    """Add the Chat v2 REST routes to the application."""
