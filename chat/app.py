"""The GMS server application: Bayeux where GMS clients expect it, and the chat engine with
the API surfaces that use it.

GMS serves CometD at /genesys/cometd; plain CometD clients default to /cometd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from bayeux import AckExtension, BayeuxOptions, BayeuxServer, Engine, TimesyncExtension, mount
from bayeux.app import health

from . import (
    agent_api,
    chat_files,
    chat_v1,
    chat_v1_cometd,
    chat_v2_cometd,
    chat_v2_rest,
    notification_api,
    service_api,
    web_pages,
)
from .auth import BasicAuth, protected
from .chat_files import DiskFileStore, FileStore
from .chat_push import ChatPushNotifier
from .chat_v1_cometd import ChatV1Comet
from .config import ChatConfig
from .engine import ChatEngine
from .gms_user import GmsSecurityPolicy
from .model import ChatSession
from .node_api import NodeApi
from .push import PushService
from .storage import MemoryStorage, StorageBackend
from .storage_api import StorageApi, StorageSettings
from .store import ChatStore, MemoryChatStore

COMETD_PATHS = ("/genesys/cometd", "/cometd")
CHAT_ENGINE = web.AppKey("chat_engine", ChatEngine)
PUSH_SERVICE = web.AppKey("push_service", PushService)
STORAGE = web.AppKey("storage", StorageBackend)
SERVICE_STORAGE = web.AppKey("service_storage", StorageBackend)
CHAT_V1_COMET = web.AppKey("chat_v1_comet", ChatV1Comet)


def create_app(
    options: BayeuxOptions | None = None,
    engine: Engine | None = None,
    config: ChatConfig | None = None,
    store: ChatStore | None = None,
    storage: StorageBackend | None = None,
    files: FileStore | None = None,
    agents: dict[str, str] | None = None,
    services: StorageBackend | None = None,
) -> web.Application:
    """`agents`: agent name -> password hash, besides the `[agents]` section's; `services`:
    where Service API sessions live (a backend of their own, never the Storage API's)."""
    options = options or BayeuxOptions()
    bayeux = BayeuxServer(options, engine=engine)
    bayeux.security = GmsSecurityPolicy(bayeux)
    bayeux.add_extension(AckExtension())
    bayeux.add_extension(TimesyncExtension())
    config = config or ChatConfig()
    chat = ChatEngine(config, store or MemoryChatStore())
    push = PushService(config.sections)
    chat.observers.append(ChatPushNotifier(config, push, _cometd_connected(bayeux)))
    app = web.Application(client_max_size=options.max_message_size)
    app[CHAT_ENGINE] = chat
    app[PUSH_SERVICE] = push
    mount(app, bayeux, *COMETD_PATHS)
    app.router.add_get("/health", health)
    rest = chat_v2_rest.setup(app, chat, config.cors_allowed_origins)
    chat_files.setup(app, rest, chat, files or DiskFileStore(config.file_store_dir))
    chat_v2_cometd.setup(bayeux, chat)
    notification_api.setup(app, bayeux, config)
    agent_api.setup(app, chat, config, agents, options, bayeux.engine)
    servers = [bayeux, app[agent_api.AGENT_BAYEUX]]
    _add_admin_apis(app, servers, config, storage or MemoryStorage())
    web_pages.setup(app)
    _add_chat_v1(app, bayeux, chat, push, services or MemoryStorage())
    app.cleanup_ctx.append(_run_chat_engine)
    return app


async def _run_chat_engine(app: web.Application) -> AsyncIterator[None]:
    chat = app[CHAT_ENGINE]
    await chat.start()
    yield
    await chat.close()
    for observer in chat.observers:
        if isinstance(observer, ChatPushNotifier):
            await observer.close()
    await app[PUSH_SERVICE].close()
    await app[STORAGE].close()
    await app[CHAT_V1_COMET].close()
    await app[SERVICE_STORAGE].close()


def _add_admin_apis(
    app: web.Application,
    servers: list[BayeuxServer],
    config: ChatConfig,
    storage: StorageBackend,
) -> None:
    """Storage and Node APIs, with `[auth]` Basic authentication; `servers`: the node's
    Bayeux servers (the customers' first), which OFFLINE drains."""
    auth_section = config.sections.get("auth", {})
    auth = BasicAuth.from_section(auth_section)
    storage_api = StorageApi(storage, StorageSettings.from_sections(config.sections), auth)
    app.middlewares.append(storage_api.middleware)
    app.add_routes(storage_api.routes())
    app.add_routes(NodeApi(servers, auth, protected(auth_section, "node")).routes())
    app[STORAGE] = storage


def _add_chat_v1(
    app: web.Application,
    bayeux: BayeuxServer,
    chat: ChatEngine,
    push: PushService,
    services: StorageBackend,
) -> None:
    """The Service API, Chat API v1 on its sessions, and v1's CometD side (background state)."""
    api = service_api.setup(app, chat.config, services)
    notifications = app[notification_api.NOTIFICATION_API]
    chat_v1.setup(app, chat, api, notifications)
    app[CHAT_V1_COMET] = chat_v1_cometd.setup(bayeux, chat, api, push, notifications)
    app[SERVICE_STORAGE] = services


def _cometd_connected(bayeux: BayeuxServer) -> Callable[[ChatSession], bool]:
    """Whether a chat has an active CometD client: bound, and (when the binding is on this
    node) its Bayeux session still alive."""

    def connected(session: ChatSession) -> bool:
        binding = session.binding
        if binding is None:
            return False
        if binding.node != bayeux.engine.node_id:
            return True
        return binding.client_id in bayeux.sessions

    return connected
