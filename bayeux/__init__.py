"""A Bayeux 1.0 / CometD server on aiohttp.

Mount it with `bayeux.mount(app, BayeuxServer(...), "/cometd")`; add services with
`server.add_service("/service/echo", handler)`; plug identity in with a `SecurityPolicy`.
"""

from .app import mount
from .channels import SubscriptionIndex, matches, matching_patterns
from .engine import Engine, MemoryEngine
from .extensions import AckExtension, Extension, TimesyncExtension
from .options import BayeuxOptions
from .protocol import Message, ProtocolError
from .replay import ReplayExtension
from .security import Authorization, Authorizer, Denied, Operation, SecurityPolicy
from .server import BayeuxServer, RequestContext, ServiceRequest
from .session import Delivery, ServerSession

__all__ = [
    "AckExtension",
    "Authorization",
    "Authorizer",
    "BayeuxOptions",
    "BayeuxServer",
    "Delivery",
    "Denied",
    "Engine",
    "Extension",
    "MemoryEngine",
    "Message",
    "Operation",
    "ProtocolError",
    "ReplayExtension",
    "RequestContext",
    "SecurityPolicy",
    "ServerSession",
    "ServiceRequest",
    "SubscriptionIndex",
    "TimesyncExtension",
    "matches",
    "matching_patterns",
    "mount",
]
