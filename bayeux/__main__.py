"""A standalone Bayeux server: `python -m bayeux --port 8080`.

Serves CometD at /cometd with the ack, timesync and replay extensions and demo services:
`/service/echo` (delivers the data back to the sender), `/service/rpc/echo` (answers a
CometD remoteCall with the same data), `/service/user/bind` (`{"user": name}`: this session
now belongs to that user) and `/service/user/send` (`{"user", "channel", "data"}`: deliver
to every session of that user, on every node).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from aiohttp import web

from . import (
    AckExtension,
    BayeuxOptions,
    BayeuxServer,
    Denied,
    ReplayExtension,
    ServiceRequest,
    TimesyncExtension,
    mount,
)
from .app import add_engine_arguments, health, make_engine, run
from .engine import Engine
from .protocol import is_meta, is_valid_channel


def build_app(
    options: BayeuxOptions, path: str = "/cometd", engine: Engine | None = None
) -> web.Application:
    server = BayeuxServer(options, engine=engine)
    server.add_extension(AckExtension())
    server.add_extension(TimesyncExtension())
    server.add_extension(ReplayExtension())
    server.add_service("/service/echo", _echo)
    server.add_service("/service/rpc/echo", _rpc_echo)
    server.add_service("/service/user/bind", _bind_user)
    server.add_service("/service/user/send", _send_to_user)
    app = web.Application(client_max_size=options.max_message_size)
    mount(app, server, path)
    app.router.add_get("/health", health)
    return app


async def _echo(request: ServiceRequest) -> None:
    request.reply(request.data)


async def _rpc_echo(request: ServiceRequest) -> Any:
    return request.data


async def _bind_user(request: ServiceRequest) -> Any:
    user = _field(request, "user")
    await request.server.bind_user(request.session, user)
    return {"user": user}


async def _send_to_user(request: ServiceRequest) -> Any:
    user, channel = _field(request, "user"), _field(request, "channel")
    if not is_valid_channel(channel) or is_meta(channel):
        raise Denied("invalid_channel")
    await request.server.deliver_to_user(user, channel, request.data.get("data"))
    return {"sent": True}


def _field(request: ServiceRequest, name: str) -> str:
    value = request.data.get(name) if isinstance(request.data, dict) else None
    if not isinstance(value, str) or not value:
        raise Denied(f"missing_{name}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bayeux-server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--path", default="/cometd")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a BayeuxOptions field, e.g. timeout=30000 or max_queue=1000",
    )
    parser.add_argument("--log-level", default="INFO")
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        options = BayeuxOptions.from_pairs(args.option)
    except (TypeError, ValueError) as exc:
        parser.error(f"bad --option: {exc}")
    run(build_app(options, args.path, make_engine(args.redis, args.node_id)), args.host, args.port)


if __name__ == "__main__":
    main()
