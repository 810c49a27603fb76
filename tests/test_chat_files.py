"""Chat v2 file management (spec-chat-v2 §4): one test per conformance item 44-59 (REST) and
84-89 (chat-ntf), named `test_NN_...`, then the finer points of chat/chat_files.py.

Every test runs against both file stores (disk and a real redis-server). The customer side
goes over HTTP; CometD clients are driven in-process through the Bayeux pipeline (they never
use HTTP, so chat-ntf requests carry no Bayeux cookie); the agent side uses the engine and
`ChatFiles`' agent API.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bayeux import BayeuxServer
from bayeux.app import BAYEUX_SERVER
from chat.app import CHAT_ENGINE, create_app
from chat.chat_files import (
    CHAT_FILES,
    CHUNK,
    BlobWriter,
    ChatFiles,
    DiskFileStore,
    FileStore,
    FileTooLarge,
    RedisFileStore,
)
from chat.config import ChatConfig, FileOptions, ServiceConfig, load_config
from chat.engine import ChatEngine
from chat.errors import ChatError
from chat.store import MemoryChatStore, StoreUnavailable
from tests.conftest import PipelineClient, connected_client, fast_options
from tests.support.chat_rest import (
    ALIAS,
    NOT_FOUND,
    REPLY_KEYS,
    ROOT,
    SECURED,
    Http,
    Json,
    RestChat,
    reply,
    secured_service,
)
from tests.support.redis_server import RedisServer

NTF = "/genesys/2/chat-ntf"
SERVICE = "customer-support"
"""need-agent true; 3 files, 100 bytes each, 250 in all; txt, pdf, png; delete-file true."""
KEEPING = "keeping"
"""delete-file `odd` (no slot back) and no agent needed."""
NO_DELETE = "no-delete"
"""file.client-delete-allowed false, no agent needed."""
HEX16 = re.compile(r"[0-9A-F]{16}")
LIMIT_KEYS = {
    "download-attempts",
    "upload-max-files",
    "delete-file",
    "upload-max-file-size",
    "used-download-attempts",
    "used-upload-max-total-size",
    "upload-need-agent",
    "used-upload-max-files",
    "upload-max-total-size",
    "upload-file-types",
}
TEST_LIMITS = {
    "upload_max_files": "3",
    "upload_max_file_size": "100",
    "upload_max_total_size": "250",
    "upload_file_types": "txt:pdf:PNG",
    "delete_file": "true",
}


def config() -> ChatConfig:
    services = [
        ServiceConfig(SERVICE, file_options=dict(TEST_LIMITS)),
        ServiceConfig(KEEPING, file_options={"delete_file": "odd", "upload_need_agent": "no"}),
        ServiceConfig(
            NO_DELETE,
            file_options={"client_delete_allowed": "false", "upload_need_agent": "false"},
        ),
        secured_service(),
    ]
    return ChatConfig(
        services={s.name: s for s in services},
        alias=ALIAS,
        file_options={"download_attempts": "2"},
    )


# -- stores ----------------------------------------------------------------------------


class Stores:
    """Makes the store a test runs on, and tells what it holds."""

    def __init__(self, kind: str, redis: RedisServer | None, tmp_path: Path) -> None:
        self.kind = kind
        self.redis = redis
        self.directory = tmp_path / "files"
        self.prefix = f"t{secrets.token_hex(4)}"

    def make(self) -> FileStore:
        if self.redis is not None:
            return RedisFileStore(self.redis.url, prefix=self.prefix)
        return DiskFileStore(self.directory)

    def contents(self) -> list[bytes]:
        """Every stored blob, pending ones included."""
        if self.redis is not None:
            client = self.redis.client()
            keys = client.keys(f"{self.prefix}:file:*")
            return [client.get(key) or b"" for key in sorted(keys)]
        if not self.directory.exists():
            return []
        return [path.read_bytes() for path in sorted(self.directory.iterdir())]


@pytest.fixture(params=["disk", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return Stores(request.param, redis, tmp_path)


# -- the application -------------------------------------------------------------------


class Customer(RestChat):
    """A REST chat client."""

    async def post(self, suffix: str, **fields: str) -> aiohttp.ClientResponse:
        """A urlencoded request with this client's credentials."""
        return await self.http.post(f"{self.base}/{suffix}", data=self.credentials() | fields)

    async def json(self, suffix: str, **fields: str) -> Json:
        response = await self.post(suffix, **fields)
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        body: Json = await response.json()
        return body

    async def upload(
        self,
        name: str = "note.txt",
        content: bytes = b"hello",
        content_type: str | None = "text/plain",
        file_first: bool = False,
        **fields: str,
    ) -> aiohttp.ClientResponse:
        form = multipart(self.credentials() | fields, name, content, content_type, file_first)
        return await self.http.post(f"{self.base}/file", data=form)

    async def uploaded(self, name: str = "note.txt", content: bytes = b"hello") -> str:
        """Upload successfully; the file id."""
        response = await self.upload(name, content)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["statusCode"] == 0, body
        file_id: str = body["userData"]["file-id"]
        return file_id

    async def download(self, file_id: str, suffix: str = "/download") -> aiohttp.ClientResponse:
        return await self.post(f"file/{file_id}{suffix}")

    async def limits(self) -> dict[str, str]:
        limits: dict[str, str] = (await self.json("file/limits"))["userData"]
        return limits

    async def transcript(self) -> list[Json]:
        messages: list[Json] = (await self.json("refresh", transcriptPosition="1"))["messages"]
        return messages


def multipart(
    fields: dict[str, str],
    name: str | None = "note.txt",
    content: bytes = b"hello",
    content_type: str | None = "text/plain",
    file_first: bool = False,
) -> aiohttp.FormData:
    """A multipart form as a browser sends it (raw UTF-8 names, `"` as `%22`); the file
    part first or last."""
    form = aiohttp.FormData(default_to_multipart=True, quote_fields=False)

    def add_file() -> None:
        if name is not None:
            filename = name.replace('"', "%22")
            form.add_field("file", content, filename=filename, content_type=content_type)

    if file_first:
        add_file()
    for key, value in fields.items():
        form.add_field(key, value)
    if not file_first:
        add_file()
    return form


@dataclass
class Gms:
    http: Http
    chat: ChatEngine
    files: ChatFiles
    bayeux: BayeuxServer
    stores: Stores
    agents: dict[str, str] = field(default_factory=dict)

    async def customer(self, service: str = SERVICE, http: Http | None = None) -> Customer:
        http = http or self.http
        response = await http.post(f"{ROOT}/{service}", data={"nickname": "Joan"})
        body = await response.json()
        assert body["statusCode"] == 0, body
        return Customer(
            http, service, body["chatId"], body["userId"], body["secureKey"], body["alias"]
        )

    async def chatting(self, service: str = SERVICE) -> Customer:
        """A customer whose chat agent Ann has joined."""
        customer = await self.customer(service)
        await self.agent_joins(customer.chat_id)
        return customer

    async def agent_joins(self, chat_id: str) -> str:
        agent_id = f"agent-{chat_id}"
        await self.chat.agent_join(chat_id, agent_id, "Ann")
        self.agents[chat_id] = agent_id
        return agent_id

    async def agent_uploads(self, chat_id: str, content: bytes = b"from the agent") -> str:
        return await self.files.agent_upload(
            chat_id, self.agents[chat_id], "offer.pdf", content, user_data={"k": "v"}
        )

    async def ntf(self, http: Http | None = None, **fields: str) -> aiohttp.ClientResponse:
        return await (http or self.http).post(NTF, data=fields)

    async def ntf_json(self, **fields: str) -> Json:
        response = await self.ntf(**fields)
        assert response.status == 200, await response.text()
        body: Json = await response.json()
        return body


async def make_gms(stores: Stores, store: FileStore | None = None) -> AsyncIterator[Gms]:
    app = create_app(fast_options(), config=config(), files=store or stores.make())
    async with TestClient(TestServer(app)) as http:
        yield Gms(http, app[CHAT_ENGINE], app[CHAT_FILES], app[BAYEUX_SERVER], stores)


@pytest.fixture
async def gms(stores: Stores) -> AsyncIterator[Gms]:
    async for server in make_gms(stores):
        yield server


class CometdCustomer:
    """A CometD chat client (chat v2 over CometD), in-process."""

    def __init__(self, client: PipelineClient, key: str) -> None:
        self.client = client
        self.key = key

    @classmethod
    async def start(cls, gms: Gms) -> CometdCustomer:
        client = await connected_client(gms.bayeux)
        await client.publish(
            f"/service/chatV2/{SERVICE}", {"operation": "requestChat", "nickname": "Joan"}
        )
        [reply] = await client.poll()
        return cls(client, reply["data"]["secureKey"])

    async def events(self) -> list[Json]:
        """The events of the notifications queued since last time."""
        return [e for m in await self.client.poll() for e in m["data"]["messages"]]


async def chat_id_of(gms: Gms, key: str) -> str:
    return (await gms.chat.by_secure_key(key)).chat_id


async def assert_html_failure(
    response: aiohttp.ClientResponse, code: int | None = None, status: int = 500
) -> None:
    """A failed download: an HTML page with a referenceId (and the code, when given)."""
    assert response.status == status
    assert response.headers["Content-Type"] == "text/html;charset=UTF-8"
    page = await response.text()
    assert re.search(r"referenceId: [0-9A-F]{16}", page), page
    if code is not None:
        assert f"code: {code}</p>" in page, page


# -- §11 items 44-59: REST -------------------------------------------------------------


async def test_44_limits_over_urlencoded_and_multipart(gms: Gms) -> None:
    customer = await gms.customer()
    urlencoded = await customer.json("file/limits")
    response = await gms.http.post(
        f"{customer.base}/file/limits", data=multipart(customer.credentials(), name=None)
    )
    assert response.status == 200
    assert await response.json() == urlencoded
    assert urlencoded == reply(
        customer,
        None,
        userData={
            "download-attempts": "2",
            "upload-max-files": "3",
            "delete-file": "true",
            "upload-max-file-size": "100",
            "used-download-attempts": "0",
            "used-upload-max-total-size": "0",
            "upload-need-agent": "true",
            "used-upload-max-files": "0",
            "upload-max-total-size": "250",
            "upload-file-types": "txt:pdf:PNG",
        },
    )


async def test_44_defaults_and_verbatim_values(gms: Gms) -> None:
    limits = await (await gms.customer(KEEPING)).limits()
    assert set(limits) == LIMIT_KEYS
    assert all(isinstance(value, str) for value in limits.values())
    assert limits["upload-max-file-size"] == "2097152"
    assert limits["upload-max-total-size"] == "5242880"
    assert limits["upload-file-types"] == FileOptions().upload_file_types
    assert limits["download-attempts"] == "2"  # from [chat]
    assert limits["upload-need-agent"] == "no"  # echoed as configured
    assert limits["delete-file"] == "odd"


async def test_45_upload_before_an_agent_joins(gms: Gms) -> None:
    customer = await gms.customer()
    response = await customer.upload()
    assert response.status == 200
    body = await response.json()
    assert body["statusCode"] == 2
    assert body["chatEnded"] is False
    assert [error["code"] for error in body["errors"]] == [261]
    assert gms.stores.contents() == []
    await gms.agent_joins(customer.chat_id)
    assert HEX16.fullmatch(await customer.uploaded())


async def test_45_no_agent_needed(gms: Gms) -> None:
    customer = await gms.customer(KEEPING)
    assert HEX16.fullmatch(await customer.uploaded())


async def test_46_disallowed_extension(gms: Gms) -> None:
    customer = await gms.chatting()
    for name in ("tool.exe", "README", "archive.txt.zip"):
        response = await customer.upload(name)
        assert response.status == 400
        assert await response.json() == {"errors": [{"code": 203, "advice": "txt,pdf,PNG"}]}
    assert HEX16.fullmatch(await customer.uploaded("SHOUT.TXT"))  # case-insensitive
    assert HEX16.fullmatch(await customer.uploaded("pic.Png"))


async def test_47_file_over_the_size_limit(gms: Gms) -> None:
    customer = await gms.chatting()
    response = await customer.upload(content=b"x" * 101)
    assert response.status == 400
    assert await response.json() == {"errors": [{"code": 202, "advice": "100"}]}
    assert HEX16.fullmatch(await customer.uploaded(content=b"x" * 100))
    assert gms.stores.contents() == [b"x" * 100]


async def test_47_files_over_the_total(gms: Gms) -> None:
    customer = await gms.chatting()
    await customer.uploaded(content=b"a" * 100)
    await customer.uploaded(content=b"b" * 100)
    response = await customer.upload(content=b"c" * 51)
    assert response.status == 400
    assert await response.json() == {"errors": [{"code": 202, "advice": "250"}]}
    assert HEX16.fullmatch(await customer.uploaded(content=b"c" * 50))


async def test_47_every_broken_limit_at_once(gms: Gms) -> None:
    customer = await gms.chatting()
    await customer.uploaded(content=b"a" * 100)
    await customer.uploaded(content=b"b" * 100)
    await customer.uploaded(content=b"c" * 10)
    response = await customer.upload("big.exe", b"x" * 300)
    assert response.status == 400
    assert await response.json() == {
        "errors": [
            {"code": 203, "advice": "txt,pdf,PNG"},
            {"code": 202, "advice": "100"},
            {"code": 202, "advice": "250"},
            {"code": 201, "advice": "3"},
        ]
    }


async def test_48_too_many_files(gms: Gms) -> None:
    customer = await gms.chatting()
    for _ in range(3):
        await customer.uploaded()
    response = await customer.upload()
    assert response.status == 400
    assert await response.json() == {"errors": [{"code": 201, "advice": "3"}]}


async def test_49_upload_without_a_file_part(gms: Gms) -> None:
    customer = await gms.chatting()
    response = await gms.http.post(
        f"{customer.base}/file", data=multipart(customer.credentials(), name=None)
    )
    assert response.status == 400
    assert await response.json() == {"errors": [{"code": 165}]}
    urlencoded = await customer.post("file")
    assert urlencoded.status == 400
    assert await urlencoded.json() == {"errors": [{"code": 165}]}


async def test_49_every_missing_parameter_at_once(gms: Gms) -> None:
    customer = await gms.chatting()
    response = await gms.http.post(f"{customer.base}/file", data=multipart({}, name=None))
    assert response.status == 400
    codes = [error["code"] for error in (await response.json())["errors"]]
    assert sorted(codes) == [151, 152, 153, 165]


async def test_50_rest_upload_reply_and_event(gms: Gms) -> None:
    customer = await gms.chatting()
    before = await customer.json("refresh", transcriptPosition="0")
    response = await customer.upload(
        "notes.txt",
        b"some notes",
        **{"userData[file-description]": "my notes", "userData[case]": "42"},
    )
    assert response.status == 200
    body = await response.json()
    file_id = body["userData"]["file-id"]
    assert HEX16.fullmatch(file_id)
    assert list(body) == [*REPLY_KEYS, "chatId", "userData", "nextPosition"]
    assert body == reply(
        customer,
        [],
        chatId=customer.chat_id,
        userData={"file-id": file_id},
        nextPosition=before["nextPosition"] + 1,
    )
    [event] = (await customer.json("refresh", transcriptPosition=str(before["nextPosition"])))[
        "messages"
    ]
    assert event["type"] == "FileUploaded"
    assert event["index"] == before["nextPosition"]
    assert event["from"] == {"nickname": "Joan", "participantId": 1, "type": "Client"}
    assert event["text"] == "notes.txt"
    assert event["userData"] == {
        "file-id": file_id,
        "file-name": "notes.txt",
        "file-size": "10",
        "file-type": "text/plain",
        "file-description": "my notes",
        "case": "42",
    }


async def test_51_used_counters_grow(gms: Gms) -> None:
    customer = await gms.chatting()
    await customer.uploaded(content=b"x" * 40)
    await customer.uploaded(content=b"y" * 2)
    limits = await customer.limits()
    assert limits["used-upload-max-files"] == "2"
    assert limits["used-upload-max-total-size"] == "42"


async def test_52_download(gms: Gms) -> None:
    customer = await gms.chatting()
    content = bytes(range(100))
    file_id = await customer.uploaded("data.pdf", content)
    response = await customer.download(file_id)
    assert response.status == 200
    assert await response.read() == content
    assert response.headers["Content-Type"] == "text/plain"  # as uploaded
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"data.pdf\"; filename*=UTF-8''data.pdf"
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Length"] == "100"
    assert (await customer.limits())["used-download-attempts"] == "1"


async def test_52_download_of_a_non_ascii_name_over_multipart(gms: Gms) -> None:
    customer = await gms.chatting()
    name = 'Überweisung "März".pdf'
    response = await customer.upload(name, b"%PDF", content_type=None)
    file_id = (await response.json())["userData"]["file-id"]
    download = await gms.http.post(
        f"{customer.base}/file/{file_id}/download", data=multipart(customer.credentials(), None)
    )
    assert download.status == 200
    assert await download.read() == b"%PDF"
    assert download.headers["Content-Type"] == "application/pdf"  # guessed from the name
    assert download.headers["Content-Disposition"] == (
        f"attachment; filename=\"_berweisung _M_rz_.pdf\"; filename*=UTF-8''{quote(name, safe='')}"
    )


async def test_53_download_of_an_unknown_file(gms: Gms) -> None:
    customer = await gms.chatting()
    await assert_html_failure(await customer.download("00F057DB0FF10005"), 241)


async def test_53_every_download_failure_is_html(gms: Gms) -> None:
    customer = await gms.chatting()
    file_id = await customer.uploaded()
    url = f"{customer.base}/file/{file_id}/download"
    wrong_key = customer.credentials() | {"secureKey": "0" * 32}
    await assert_html_failure(await gms.http.post(url, data=wrong_key), 249)
    await assert_html_failure(await gms.http.post(url, data={"alias": "1"}))
    json_body = {"Content-Type": "application/json"}
    await assert_html_failure(await gms.http.post(url, data="{}", headers=json_body))
    unknown = await gms.http.post(
        f"{ROOT}/nowhere/{customer.chat_id}/file/{file_id}/download", data=customer.credentials()
    )
    await assert_html_failure(unknown, 306, status=404)


async def test_54_download_attempts_per_file(gms: Gms) -> None:
    customer = await gms.chatting()
    first = await customer.uploaded()
    second = await customer.uploaded()
    for _ in range(2):
        assert (await customer.download(first)).status == 200
    await assert_html_failure(await customer.download(first), 249)
    assert (await customer.download(second)).status == 200  # its own attempts
    assert (await customer.limits())["used-download-attempts"] == "3"


async def test_55_client_downloads_an_agent_file(gms: Gms) -> None:
    customer = await gms.chatting(KEEPING)
    content = b"%PDF-1.4 " + secrets.token_bytes(3 * CHUNK)  # several chunks
    file_id = await gms.agent_uploads(customer.chat_id, content)
    response = await customer.download(file_id)
    assert response.status == 200
    assert await response.read() == content
    assert response.headers["Content-Type"] == "application/pdf"
    event = (await customer.transcript())[-1]
    assert event["type"] == "FileUploaded"
    assert event["from"]["type"] == "Agent"
    assert event["userData"] == {
        "k": "v",
        "file-id": file_id,
        "file-name": "offer.pdf",
        "file-size": str(len(content)),
        "file-type": "application/pdf",
    }
    limits = await customer.limits()
    assert limits["used-upload-max-files"] == "0"  # agents' files are not the client's
    assert limits["used-download-attempts"] == "1"


async def test_56_delete_own_file(gms: Gms) -> None:
    customer = await gms.chatting()
    file_id = await customer.uploaded("gone.txt")
    body = await customer.json(f"file/{file_id}/delete")
    assert body == reply(customer, [], chatId=customer.chat_id, nextPosition=body["nextPosition"])
    event = (await customer.transcript())[-1]
    assert event["type"] == "FileDeleted"
    assert event["index"] == body["nextPosition"] - 1
    assert event["from"]["type"] == "Client"
    assert event["text"] == "gone.txt"
    assert event["userData"] == {"file-id": file_id, "file-name": "gone.txt"}
    await assert_html_failure(await customer.download(file_id), 264)
    assert gms.stores.contents() == []


async def test_57_delete_refusals(gms: Gms) -> None:
    customer = await gms.chatting()
    file_id = await customer.uploaded()
    await customer.json(f"file/{file_id}/delete")
    again = await customer.json(f"file/{file_id}/delete")
    assert again["statusCode"] == 2
    assert again["chatEnded"] is False
    assert [error["code"] for error in again["errors"]] == [264]
    unknown = await customer.json("file/00F057DB0FF10005/delete")
    assert [error["code"] for error in unknown["errors"]] == [241]
    agent_file = await gms.agent_uploads(customer.chat_id)
    refused = await customer.json(f"file/{agent_file}/delete")
    assert refused["statusCode"] == 2
    assert [error["code"] for error in refused["errors"]] == [249]
    assert (await customer.download(agent_file)).status == 200  # still there


async def test_57_client_delete_not_allowed(gms: Gms) -> None:
    customer = await gms.customer(NO_DELETE)
    file_id = await customer.uploaded()
    refused = await customer.json(f"file/{file_id}/delete")
    assert refused["statusCode"] == 2
    assert [error["code"] for error in refused["errors"]] == [249]


async def test_58_delete_file_true_gives_the_slot_back(gms: Gms) -> None:
    customer = await gms.chatting()
    ids = [await customer.uploaded(content=b"x" * 100) for _ in range(2)]
    await customer.uploaded(content=b"x" * 50)
    await customer.json(f"file/{ids[0]}/delete")
    limits = await customer.limits()
    assert limits["used-upload-max-files"] == "2"
    assert limits["used-upload-max-total-size"] == "150"
    assert limits["delete-file"] == "true"
    assert HEX16.fullmatch(await customer.uploaded(content=b"x" * 100))


async def test_58_other_delete_file_values_keep_the_counters(gms: Gms) -> None:
    customer = await gms.customer(KEEPING)
    file_id = await customer.uploaded(content=b"x" * 30)
    await customer.json(f"file/{file_id}/delete")
    limits = await customer.limits()
    assert limits["used-upload-max-files"] == "1"
    assert limits["used-upload-max-total-size"] == "30"
    assert limits["delete-file"] == "odd"


async def test_59_download_alias_without_download(gms: Gms) -> None:
    customer = await gms.chatting()
    file_id = await customer.uploaded(content=b"alias")
    response = await customer.download(file_id, suffix="")
    assert response.status == 200
    assert await response.read() == b"alias"
    await assert_html_failure(await customer.download("00F057DB0FF10005", suffix=""), 241)


# -- §11 items 84-89: chat-ntf ---------------------------------------------------------


async def test_84_ntf_get_limits(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    before = (await gms.chat.by_secure_key(cometd.key)).next_position
    body = await gms.ntf_json(operation="fileGetLimits", secureKey=cometd.key)
    assert list(body) == ["messages", "chatEnded", "statusCode", "secureKey"]
    assert body["chatEnded"] is False
    assert body["statusCode"] == 0
    assert body["secureKey"] == cometd.key
    [notice] = body["messages"]
    assert set(notice) == {"from", "text", "type", "utcTime", "userData"}  # no index
    assert notice["type"] == "Notice"
    assert notice["text"] == "file-client-cfg-get"
    assert notice["from"] == {"nickname": "Joan", "participantId": 1, "type": "Client"}
    assert isinstance(notice["utcTime"], int)
    assert set(notice["userData"]) == LIMIT_KEYS
    assert notice["userData"]["upload-max-files"] == "3"
    assert (await gms.chat.by_secure_key(cometd.key)).next_position == before  # not stored
    assert await cometd.events() == []


async def test_85_ntf_upload_notifies_the_bound_client(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    await gms.agent_joins(await chat_id_of(gms, cometd.key))
    assert [e["type"] for e in await cometd.events()] == ["ParticipantJoined"]
    form = multipart({"operation": "fileUpload", "secureKey": cometd.key}, "pic.png", b"PNG")
    form.add_field("userData[file-description]", "a picture")
    response = await gms.http.post(NTF, data=form)
    assert response.status == 200
    body = await response.json()
    file_id = body["userData"]["file-id"]
    assert body == {
        "chatEnded": False,
        "statusCode": 0,
        "secureKey": cometd.key,
        "userData": {"file-id": file_id},
    }
    [event] = await cometd.events()
    assert event["type"] == "FileUploaded"
    assert event["from"]["type"] == "Client"
    assert event["userData"]["file-id"] == file_id
    assert event["userData"]["file-description"] == "a picture"


async def test_86_ntf_download(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    chat_id = await chat_id_of(gms, cometd.key)
    await gms.agent_joins(chat_id)
    file_id = await gms.agent_uploads(chat_id, b"for you")
    for operation in ("fileDownload", "download"):
        response = await gms.ntf(operation=operation, secureKey=cometd.key, fileId=file_id)
        assert response.status == 200
        assert await response.read() == b"for you"
        assert response.headers["Content-Disposition"].startswith("attachment; ")
    in_query = await gms.http.post(
        NTF, params={"fileId": file_id}, data={"operation": "fileDownload", "secureKey": cometd.key}
    )
    await assert_html_failure(in_query, 249)  # both attempts are used up
    file_id = await gms.agent_uploads(chat_id, b"again")
    in_query = await gms.http.post(
        NTF, params={"fileId": file_id}, data={"operation": "fileDownload", "secureKey": cometd.key}
    )
    assert await in_query.read() == b"again"


async def test_86_ntf_download_failures_are_html(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    key = cometd.key
    await assert_html_failure(await gms.ntf(operation="fileDownload", secureKey=key), 166)
    await assert_html_failure(
        await gms.ntf(operation="download", secureKey=key, fileId="00F057DB0FF10005"), 241
    )
    await assert_html_failure(
        await gms.ntf(operation="fileDownload", secureKey="0" * 32, fileId="1"), 249
    )


async def test_87_ntf_delete_notifies_the_bound_client(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    await gms.agent_joins(await chat_id_of(gms, cometd.key))
    form = multipart({"operation": "fileUpload", "secureKey": cometd.key})
    file_id = (await (await gms.http.post(NTF, data=form)).json())["userData"]["file-id"]
    await cometd.events()
    body = await gms.ntf_json(operation="fileDelete", secureKey=cometd.key, fileId=file_id)
    assert body == {"chatEnded": False, "statusCode": 0, "secureKey": cometd.key}
    [event] = await cometd.events()
    assert event["type"] == "FileDeleted"
    assert event["userData"] == {"file-id": file_id, "file-name": "note.txt"}
    again = await gms.ntf_json(operation="fileDelete", secureKey=cometd.key, fileId=file_id)
    assert again["statusCode"] == 2
    assert [error["code"] for error in again["errors"]] == [264]
    missing = await gms.ntf(operation="fileDelete", secureKey=cometd.key)
    assert missing.status == 400
    assert await missing.json() == {"errors": [{"code": 166}]}


async def test_ntf_upload_refusals(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    fields = {"operation": "fileUpload", "secureKey": cometd.key}
    early = await (await gms.http.post(NTF, data=multipart(fields))).json()
    assert (early["statusCode"], early["chatEnded"]) == (2, False)
    assert [error["code"] for error in early["errors"]] == [261]
    await gms.agent_joins(await chat_id_of(gms, cometd.key))
    refused = await gms.http.post(NTF, data=multipart(fields, "x.exe", b"x" * 101))
    assert refused.status == 400
    assert [error["code"] for error in (await refused.json())["errors"]] == [203, 202]
    missing = await gms.http.post(NTF, data=multipart(fields, name=None))
    assert missing.status == 400
    assert await missing.json() == {"errors": [{"code": 165}]}
    assert gms.stores.contents() == []


async def test_88_ntf_validation(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    cases: list[tuple[dict[str, str], list[int]]] = [
        ({"operation": "fileGetLimits"}, [153]),
        ({"secureKey": cometd.key}, [167]),
        ({"operation": "fileRename", "secureKey": cometd.key}, [307]),
        ({}, [167, 153]),
        ({"operation": "fileRename"}, [153, 307]),
    ]
    for fields, codes in cases:
        response = await gms.ntf(**fields)
        assert response.status == 400, fields
        errors = (await response.json())["errors"]
        assert sorted(error["code"] for error in errors) == sorted(codes), fields


async def test_89_ntf_needs_no_cookie(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    await gms.agent_joins(await chat_id_of(gms, cometd.key))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bare:
        url = gms.http.make_url(NTF)
        form = multipart({"operation": "fileUpload", "secureKey": cometd.key})
        async with bare.post(url, data=form) as response:
            assert response.status == 200
            file_id = (await response.json())["userData"]["file-id"]
        fields = {"operation": "fileDownload", "secureKey": cometd.key, "fileId": file_id}
        async with bare.post(url, data=fields) as response:
            assert await response.read() == b"hello"
        assert not response.cookies


# -- finer points ----------------------------------------------------------------------


async def test_ntf_on_a_rest_chat_and_ended_chats(gms: Gms) -> None:
    customer = await gms.customer(KEEPING)
    body = await gms.ntf_json(operation="fileGetLimits", secureKey=customer.secure_key)
    assert body["messages"][0]["from"]["nickname"] == "Joan"
    await customer.post("disconnect")
    ended = await gms.ntf_json(operation="fileGetLimits", secureKey=customer.secure_key)
    assert ended == NOT_FOUND


async def test_rest_file_operations_with_a_wrong_key(gms: Gms) -> None:
    customer = await gms.chatting()
    file_id = await customer.uploaded()
    customer.secure_key = "0" * 32
    assert await customer.json("file/limits") == NOT_FOUND
    assert await customer.json(f"file/{file_id}/delete") == NOT_FOUND
    response = await customer.upload()
    assert await response.json() == NOT_FOUND
    assert len(gms.stores.contents()) == 1  # only the first upload


async def test_unknown_service_and_methods(gms: Gms) -> None:
    customer = await gms.chatting()
    response = await gms.http.post(
        f"{ROOT}/nowhere/{customer.chat_id}/file/limits", data=customer.credentials()
    )
    assert response.status == 404
    assert (await response.json())["errors"][0]["code"] == 306
    assert (await gms.http.get(f"{customer.base}/file/limits")).status == 405
    assert (await gms.http.get(NTF)).status == 405
    preflight = await gms.http.options(
        NTF,
        headers={"Origin": "https://widget.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://widget.example"


async def test_download_exposes_content_disposition_cross_site(gms: Gms) -> None:
    customer = await gms.chatting()
    file_id = await customer.uploaded()
    response = await gms.http.post(
        f"{customer.base}/file/{file_id}/download",
        data=customer.credentials(),
        headers={"Origin": "https://widget.example"},
    )
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://widget.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Expose-Headers"] == "Content-Disposition"


async def test_basic_auth_services(gms: Gms) -> None:
    auth = {"Authorization": f"Basic {base64.b64encode(b'widget:s3cret').decode()}"}
    created = await gms.http.post(f"{ROOT}/{SECURED}", data={"nickname": "Joan"}, headers=auth)
    body = await created.json()
    base = f"{ROOT}/{SECURED}/{body['chatId']}/file"
    credentials = {"userId": body["userId"], "secureKey": body["secureKey"], "alias": "1"}
    assert (await gms.http.post(f"{base}/limits", data=credentials)).status == 401
    limits = await gms.http.post(f"{base}/limits", data=credentials, headers=auth)
    assert (await limits.json())["statusCode"] == 0
    download = await gms.http.post(f"{base}/00F057DB0FF10005/download", data=credentials)
    await assert_html_failure(download, status=401)
    assert download.headers["WWW-Authenticate"] == 'Basic realm="GMS"'


async def test_rejected_uploads_leave_nothing_stored(gms: Gms) -> None:
    customer = await gms.chatting()
    await customer.upload(content=b"x" * 101)
    await customer.upload("bad.exe")
    await customer.upload(content=b"x" * 101, file_first=True)
    await customer.upload(file_first=True, secureKey="0" * 32)
    assert gms.stores.contents() == []


async def test_fields_after_the_file(gms: Gms) -> None:
    customer = await gms.chatting()
    response = await customer.upload(content=b"late fields", file_first=True)
    file_id = (await response.json())["userData"]["file-id"]
    assert await (await customer.download(file_id)).read() == b"late fields"
    large = await customer.upload(content=b"x" * 300, file_first=True)
    assert large.status == 400
    assert [error["code"] for error in (await large.json())["errors"]] == [202, 202]


async def test_ntf_fields_after_the_file(gms: Gms) -> None:
    cometd = await CometdCustomer.start(gms)
    await gms.agent_joins(await chat_id_of(gms, cometd.key))
    fields = {"operation": "fileUpload", "secureKey": cometd.key}
    form = multipart(fields, "late.txt", b"late", file_first=True)
    body = await (await gms.http.post(NTF, data=form)).json()
    assert body["statusCode"] == 0
    assert gms.stores.contents() == [b"late"]
    other = multipart({"operation": "fileGetLimits", "secureKey": cometd.key}, content=b"ignored")
    assert (await (await gms.http.post(NTF, data=other)).json())["statusCode"] == 0
    assert gms.stores.contents() == [b"late"]


async def test_a_huge_upload_is_not_read_once_refused(gms: Gms) -> None:
    """With the credentials first, a part over every limit is answered without reading
    (or storing) the rest; without them, it is drained to find them, within bounds."""
    customer = await gms.chatting()
    huge = b"x" * (8 * CHUNK)
    response = await customer.upload(content=huge)
    assert response.status == 400
    assert [error["code"] for error in (await response.json())["errors"]] == [202, 202]
    refused = await customer.upload(content=huge, file_first=True)
    assert refused.status == 413
    assert gms.stores.contents() == []
    assert HEX16.fullmatch(await customer.uploaded())  # the chat is fine


async def test_agent_delete_and_download(gms: Gms) -> None:
    customer = await gms.chatting()
    agent = gms.agents[customer.chat_id]
    client_file = await customer.uploaded("mine.txt", b"client bytes")
    record, content = await gms.files.agent_download(customer.chat_id, client_file)
    assert (record.name, content) == ("mine.txt", b"client bytes")
    outcome = await gms.files.agent_delete(customer.chat_id, agent, client_file)
    [event] = outcome.events
    assert (event.type, event.party.type) == ("FileDeleted", "Agent")
    limits = await customer.limits()
    assert limits["used-upload-max-files"] == "0"  # delete-file true: the slot is back
    await assert_html_failure(await customer.download(client_file), 264)


async def test_agent_upload_limits(gms: Gms) -> None:
    customer = await gms.chatting()
    with pytest.raises(ChatError) as too_large:
        await gms.agent_uploads(customer.chat_id, b"x" * 101)
    assert too_large.value.codes == [202]
    with pytest.raises(ChatError) as not_joined:
        await gms.files.agent_upload(customer.chat_id, "stranger", "a.txt", b"a")
    assert not_joined.value.codes == [249]
    assert gms.stores.contents() == []


async def test_files_go_when_the_chat_ends(gms: Gms) -> None:
    customer = await gms.chatting()
    await customer.uploaded()
    await gms.agent_uploads(customer.chat_id)
    assert len(gms.stores.contents()) == 2
    await gms.chat.complete(customer.chat_id)
    assert gms.stores.contents() == []


async def test_concurrent_uploads_respect_the_count(gms: Gms) -> None:
    customer = await gms.chatting()
    responses = await asyncio.gather(*(customer.upload() for _ in range(5)))
    statuses = sorted([r.status for r in responses])
    assert statuses == [200, 200, 200, 400, 400]
    assert (await customer.limits())["used-upload-max-files"] == "3"
    assert len(gms.stores.contents()) == 3


class FailingStore(FileStore):
    """A store that is down."""

    async def writer(self, limit: int) -> BlobWriter:
        raise StoreUnavailable("down")

    async def open(self, blob: str) -> AsyncIterator[bytes] | None:
        raise StoreUnavailable("down")

    async def delete(self, blob: str) -> None:
        raise StoreUnavailable("down")


async def test_store_unavailable_is_transient(tmp_path: Path) -> None:
    async for gms in make_gms(Stores("disk", None, tmp_path), FailingStore()):
        customer = await gms.chatting()
        response = await customer.upload()
        assert await response.json() == {"statusCode": 1}
        ntf = multipart({"operation": "fileUpload", "secureKey": customer.secure_key})
        assert await (await gms.http.post(NTF, data=ntf)).json() == {"statusCode": 1}


class RecordingStore(DiskFileStore):
    """The disk store, recording the size of every write (and failing them on demand)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.writes: list[int] = []
        self.failure: Exception | None = None

    async def writer(self, limit: int) -> BlobWriter:
        writer = await super().writer(limit)
        original = writer.write

        async def write(data: bytes) -> None:
            if self.failure is not None:
                raise self.failure
            self.writes.append(len(data))
            await original(data)

        writer.write = write  # type: ignore[method-assign]
        return writer


async def test_store_failing_mid_upload_is_transient(tmp_path: Path) -> None:
    stores = Stores("disk", None, tmp_path)
    store = RecordingStore(stores.directory)
    async for gms in make_gms(stores, store):
        customer = await gms.chatting()
        store.failure = StoreUnavailable("disk gone")
        assert await (await customer.upload()).json() == {"statusCode": 1}
        assert stores.contents() == []
        store.failure = None
        assert HEX16.fullmatch(await customer.uploaded())


async def test_uploads_stream_in_chunks(tmp_path: Path) -> None:
    stores = Stores("disk", None, tmp_path)
    store = RecordingStore(stores.directory)
    options = {"upload_max_file_size": str(10 * CHUNK), "upload_max_total_size": "99999999"}
    app_config = config()
    app_config.services[KEEPING].file_options.update(options)
    app = create_app(fast_options(), config=app_config, files=store)
    async with TestClient(TestServer(app)) as http:
        gms = Gms(http, app[CHAT_ENGINE], app[CHAT_FILES], app[BAYEUX_SERVER], stores)
        customer = await gms.customer(KEEPING)
        content = secrets.token_bytes(5 * CHUNK + 7)
        file_id = await customer.uploaded(content=content)
        assert await (await customer.download(file_id)).read() == content
        assert sum(store.writes) == len(content)
        assert max(store.writes) <= CHUNK
        store.writes.clear()
        response = await customer.upload(content=b"x" * (10 * CHUNK + 1))
        assert response.status == 400
        assert sum(store.writes) <= 10 * CHUNK  # dropped once over the limit
        assert stores.contents() == [content]


async def test_default_disk_store_is_a_temp_dir() -> None:
    store = DiskFileStore()
    writer = await store.writer(10)
    await writer.write(b"abc")
    await writer.commit()
    path = await store.path(writer.blob)
    assert path.read_bytes() == b"abc"
    assert path.parent.name.startswith("gms-files-")
    await store.close()
    assert not path.parent.exists()


async def test_redis_blobs_are_bounded_and_pending_ones_expire(redis_server: RedisServer) -> None:
    store = RedisFileStore(redis_server.url, prefix="bounded", pending_ttl_s=60)
    try:
        writer = await store.writer(4)
        await writer.write(b"abc")
        with pytest.raises(FileTooLarge):
            await writer.write(b"de")
        ttl = redis_server.client().pttl(f"bounded:file:{writer.blob}:part")
        assert 0 < ttl <= 60_000
        await writer.commit()
        assert redis_server.client().pttl(f"bounded:file:{writer.blob}") == -1
        chunks = await store.open(writer.blob)
        assert chunks is not None
        assert b"".join([c async for c in chunks]) == b"abc"
        empty = await store.writer(4)
        await empty.commit()
        chunks = await store.open(empty.blob)
        assert chunks is not None
        assert [c async for c in chunks] == []
        assert await store.open("f" * 32) is None
    finally:
        await store.close()


async def test_two_nodes_share_redis_files(redis_server: RedisServer, tmp_path: Path) -> None:
    """§11 item 100 for files: a chat's files are managed from any node."""
    chats = MemoryChatStore()
    prefix = f"n{secrets.token_hex(4)}"
    apps = [
        create_app(
            fast_options(),
            config=config(),
            store=chats,
            files=RedisFileStore(redis_server.url, prefix=prefix),
        )
        for _ in range(2)
    ]
    async with TestClient(TestServer(apps[0])) as a, TestClient(TestServer(apps[1])) as b:
        stores = Stores("redis", redis_server, tmp_path)
        node_a = Gms(a, apps[0][CHAT_ENGINE], apps[0][CHAT_FILES], apps[0][BAYEUX_SERVER], stores)
        customer = await node_a.chatting()
        file_id = await customer.uploaded(content=b"shared")
        customer.http = b
        assert await (await customer.download(file_id)).read() == b"shared"
        assert (await customer.limits())["used-download-attempts"] == "1"
        await customer.json(f"file/{file_id}/delete")


def test_config_file_options(tmp_path: Path) -> None:
    ini = tmp_path / "gms.ini"
    ini.write_text(
        "[chat]\n"
        "file.upload-max-files = 5\n"
        "file.delete-file = odd\n"
        "file_store_dir = /var/lib/gms/files\n"
        "[chat.sales]\n"
        "file.upload-max-files = 7\n"
        "file.upload-file-types = pdf:txt\n"
        "[chat.support]\n"
    )
    loaded = load_config(ini)
    assert loaded.file_store_dir == "/var/lib/gms/files"
    sales, support = loaded.files("sales"), loaded.files("support")
    assert (sales.upload_max_files, sales.delete_file, sales.file_types) == (
        "7",
        "odd",
        ["pdf", "txt"],
    )
    assert (support.upload_max_files, support.delete_file) == ("5", "odd")
    assert support.upload_max_file_size == "2097152"
    assert not support.delete_frees_slot


@pytest.mark.parametrize(
    "line",
    [
        "file.upload-max-filez = 1",
        "file.upload_max_files = 1",
        "file_options = x",
        "file.upload-max-files = ten",
        "file.upload-need-agent = maybe",
    ],
)
def test_config_file_option_errors(tmp_path: Path, line: str) -> None:
    ini = tmp_path / "gms.ini"
    ini.write_text(f"[chat.sales]\n{line}\n")
    with pytest.raises(ValueError, match=r"\[chat.sales\]"):
        load_config(ini)
