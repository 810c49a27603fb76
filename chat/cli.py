"""`gms-server`: run the GMS-compatible chat and notification server."""

from __future__ import annotations

import argparse
import logging
import os

from bayeux import BayeuxOptions
from bayeux.app import add_engine_arguments, make_engine, run

from .app import create_app
from .config import load_config


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
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        options = BayeuxOptions.from_pairs(args.option)
        config = load_config(args.config)
    except (TypeError, ValueError, OSError) as exc:
        parser.error(str(exc))
    logging.getLogger("gms").info("serving on http://%s:%d", args.host, args.port)
    app = create_app(options, make_engine(args.redis, args.node_id), config)
    run(app, args.host, args.port)


if __name__ == "__main__":
    main()
