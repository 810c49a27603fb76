"""The GMS server application: the Bayeux server mounted where GMS clients expect it.

GMS serves CometD at /genesys/cometd; plain CometD clients default to /cometd. The chat,
notification and agent APIs plug into this application as they are built.
"""

from __future__ import annotations

from aiohttp import web

from bayeux import AckExtension, BayeuxOptions, BayeuxServer, Engine, TimesyncExtension, mount
from bayeux.app import health

COMETD_PATHS = ("/genesys/cometd", "/cometd")


def create_app(
    options: BayeuxOptions | None = None, engine: Engine | None = None
) -> web.Application:
    options = options or BayeuxOptions()
    bayeux = BayeuxServer(options, engine=engine)
    bayeux.add_extension(AckExtension())
    bayeux.add_extension(TimesyncExtension())
    app = web.Application(client_max_size=options.max_message_size)
    mount(app, bayeux, *COMETD_PATHS)
    app.router.add_get("/health", health)
    return app
