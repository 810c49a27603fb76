"""A standalone Bayeux server: `python -m bayeux --port 8080`.

Serves CometD at /cometd with the ack and timesync extensions and two demo services:
`/service/echo` (delivers the data back to the sender) and `/service/rpc/echo` (answers a
CometD remoteCall with the same data).
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
    ReplayExtension,
    ServiceRequest,
    TimesyncExtension,
    mount,
)
from .app import add_engine_arguments, health, make_engine, run
from .engine import Engine


def build_app(
    options: BayeuxOptions, path: str = "/cometd", engine: Engine | None = None
) -> web.Application:
    server = BayeuxServer(options, engine=engine)
    server.add_extension(AckExtension())
    server.add_extension(TimesyncExtension())
    server.add_extension(ReplayExtension())
    server.add_service("/service/echo", _echo)
    server.add_service("/service/rpc/echo", _rpc_echo)
    app = web.Application(client_max_size=options.max_message_size)
    mount(app, server, path)
    app.router.add_get("/health", health)
    return app


async def _echo(request: ServiceRequest) -> None:
    request.reply(request.data)


async def _rpc_echo(request: ServiceRequest) -> Any:
    return request.data


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
