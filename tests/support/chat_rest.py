"""Chat API v2 over REST (spec-chat-v2 §1-§4) for tests: a chat's client with its credentials,
and the replies the server is expected to send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from chat.config import ServiceConfig
from chat.passwords import hash_password

Json = dict[str, Any]
Http = TestClient[Any, Any]

ROOT = "/genesys/2/chat"
ALIAS = "117"
"""The alias the test servers are configured with."""
SECURED = "secured"
"""The name of `secured_service()`."""
NOT_FOUND = {
    "statusCode": 2,
    "chatEnded": True,
    "errors": [{"code": 249, "advice": "chat session not found"}],
}
"""The reply about a chat that does not exist (or not for these credentials)."""


def secured_service() -> ServiceConfig:
    """A service with Basic auth: user `widget`, password `s3cret`."""
    return ServiceConfig(
        SECURED,
        basic_auth=True,
        credentials={"widget": hash_password("s3cret", iterations=1000)},
    )


@dataclass
class RestChat:
    """A chat created over REST, seen from its client: where it is and the credentials every
    request about it carries."""

    http: Http
    service: str
    chat_id: str
    user_id: str
    secure_key: str
    alias: str

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.service}/{self.chat_id}"

    def credentials(self) -> dict[str, str]:
        return {"userId": self.user_id, "secureKey": self.secure_key, "alias": self.alias}


REPLY_KEYS = ("messages", "chatEnded", "statusCode", "alias", "secureKey", "userId")
"""The keys every successful reply about a chat starts with, in order."""


def reply(chat: RestChat, messages: list[Json] | None, **fields: Any) -> Json:
    """A successful reply about `chat` (alias ALIAS): its envelope, then `fields`."""
    return {
        "messages": messages,
        "chatEnded": False,
        "statusCode": 0,
        "alias": ALIAS,
        "secureKey": chat.secure_key,
        "userId": chat.user_id,
        **fields,
    }
