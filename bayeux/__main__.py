"""A standalone Bayeux server: `python -m bayeux --port 8080`.

Serves CometD at /cometd with the ack and timesync extensions and two demo services:
`/service/echo` (delivers the data back to the sender) and `/service/rpc/echo` (answers a
CometD remoteCall with the same data).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from aiohttp import web

from . import AckExtension, BayeuxOptions, BayeuxServer, ServiceRequest, TimesyncExtension, mount


def build_app(options: BayeuxOptions, path: str = "/cometd") -> web.Application:
    server = BayeuxServer(options)
    server.add_extension(AckExtension())
    server.add_extension(TimesyncExtension())
    server.add_service("/service/echo", _echo)
    server.add_service("/service/rpc/echo", _rpc_echo)
    app = web.Application(client_max_size=options.max_message_size)
    app["bayeux"] = server
    mount(app, server, path)
    app.router.add_get("/health", _health)
    return app


async def _echo(request: ServiceRequest) -> None:
    request.reply(request.data)


async def _rpc_echo(request: ServiceRequest) -> Any:
    return request.data


async def _health(request: web.Request) -> web.Response:
    server: BayeuxServer = request.app["bayeux"]
    status = 200 if server.engine.healthy else 503
    return web.json_response({"sessions": len(server.sessions)}, status=status)


def parse_options(pairs: list[str]) -> BayeuxOptions:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option needs key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    try:
        return BayeuxOptions.from_strings(values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"bad option: {exc}") from None


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bayeux-server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--path", default="/cometd")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a BayeuxOptions field, e.g. timeout=30000 or max_queue=1000",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    install_uvloop()
    app = build_app(parse_options(args.option), args.path)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
