"""`gms-server`: run the GMS-compatible chat and notification server."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys

from bayeux import BayeuxOptions
from bayeux.app import add_engine_arguments, make_engine, run

from .agent_api import ApiSettings
from .agents import RoutingSettings, agent_credentials, hash_cli_agents
from .app import create_app
from .chat_files import RedisFileStore
from .config import load_config
from .passwords import hash_password
from .redis_store import RedisChatStore
from .storage import RedisStorage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gms-server", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("GMS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GMS_PORT", "8080")))
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Bayeux server option, e.g. timeout=30000 (see bayeux/options.py)",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("GMS_CONFIG"),
        metavar="FILE",
        help="INI file with [chat] and [chat.<service>] sections (default: one service, "
        "customer-support)",
    )
    parser.add_argument("--log-level", default=os.environ.get("GMS_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password on standard input, print its hash for a config file, and exit",
    )
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="USER:PASSWORD",
        help="an agent account for the agent API (repeatable; hashed at start-up), besides "
        "the [agents] section's",
    )
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    if args.hash_password:
        print(hash_password(_read_password()))
        return
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        options = BayeuxOptions.from_pairs(args.option)
        config = load_config(args.config)
        agents = hash_cli_agents(args.agent)
        args.agent = []  # keep no clear password around
        agent_credentials(config.sections, agents)
        RoutingSettings.from_sections(config.sections)
        ApiSettings.from_sections(config.sections)
    except (TypeError, ValueError, OSError) as exc:
        parser.error(str(exc))
    logging.getLogger("gms").info("serving on http://%s:%d", args.host, args.port)
    storage = RedisStorage(args.redis) if args.redis else None
    files = RedisFileStore(args.redis) if args.redis else None
    store = RedisChatStore(args.redis) if args.redis else None
    services = RedisStorage(args.redis, prefix="gms-service") if args.redis else None
    engine = make_engine(args.redis, args.node_id)
    app = create_app(
        options,
        engine,
        config,
        store=store,
        storage=storage,
        files=files,
        agents=agents,
        services=services,
    )
    run(app, args.host, args.port)


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\n")


if __name__ == "__main__":
    main()
