"""A local HTTP receiver standing in for the push services we cannot reach from tests
(FCM, APNs, a customer's custom HTTP service): it records every request it gets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .processes import LOOPBACK, free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    """Statuses to answer with, in order (then 200): to make deliveries fail."""
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    state = Receiver(url=f"http://{LOOPBACK}:{port}")

    async def record(request: web.Request) -> web.Response:
        if state.delay:
            await asyncio.sleep(state.delay)
        state.requests.append(Received(request.path, dict(request.headers), await request.read()))
        state.arrived.set()
        status = state.statuses.pop(0) if state.statuses else 200
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, port)
    await site.start()
    try:
        yield state
    finally:
        await runner.cleanup()
