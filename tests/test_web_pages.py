"""The web pages over HTTP (no browser: tests/e2e drives them in Chromium): what is served,
with which headers, what is refused, and the 503 that says the CometD client is missing."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from chat import web_pages
from chat.app import create_app
from tests.conftest import fast_options
from tests.support.agent_desk import basic, config

Client = TestClient[Any, Any]
COMETD_JS = "export * from './Client.js';\n"


@pytest.fixture
def cometd_dir(tmp_path: Path) -> Path:
    """A stand-in for node_modules/cometd, so these tests do not depend on npm."""
    directory = tmp_path / "cometd"
    directory.mkdir()
    (directory / "package.json").write_text('{"name": "cometd", "version": "9.0.0"}')
    (directory / "cometd.js").write_text(COMETD_JS)
    return directory


async def serve(cometd_dir: Path) -> Client:
    app = web.Application()
    web_pages.setup(app, cometd_dir=cometd_dir)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def http(cometd_dir: Path) -> AsyncIterator[Client]:
    client = await serve(cometd_dir)
    yield client
    await client.close()


@pytest.mark.parametrize("path", ["/chat", "/desk", "/"])
async def test_pages_are_html_with_a_same_origin_content_security_policy(
    http: Client, path: str
) -> None:
    async with http.get(path) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "<!doctype html>" in await response.text()


async def test_every_file_the_pages_load_is_served_with_its_type(http: Client) -> None:
    """Follows the pages' <script>/<link> references and the modules' imports: none is broken."""
    pending = ["/chat", "/desk", "/"]
    seen: dict[str, str] = {}
    while pending:
        path = pending.pop()
        async with http.get(path) as response:
            assert response.status == 200, path
            seen[path] = response.headers["Content-Type"]
            text = await response.text()
        references = re.findall(r'(?:src|href)="(/static/[^"]+)"', text)
        references += re.findall(r'from "(/static/[^"]+)"', text)
        pending += [ref for ref in references if ref not in seen and ref not in pending]
    assert seen["/static/cometd/cometd.js"] == "text/javascript; charset=utf-8"
    assert seen["/static/style.css"] == "text/css; charset=utf-8"
    scripts = {path for path, kind in seen.items() if kind.startswith("text/javascript")}
    assert {"/static/chat.js", "/static/desk.js", "/static/transcript.js"} <= scripts


async def test_the_cometd_client_comes_from_its_npm_package(http: Client) -> None:
    async with http.get("/static/cometd/cometd.js") as response:
        assert response.status == 200
        assert await response.text() == COMETD_JS


async def test_a_missing_cometd_client_is_a_503_saying_how_to_install_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gms.web"):
        client = await serve(tmp_path / "not-installed")
    try:
        assert "npm ci" in caplog.text and "not-installed" in caplog.text
        async with client.get("/static/cometd/cometd.js") as response:
            assert response.status == 503
            assert "npm ci" in await response.text()
        async with client.get("/chat") as response:
            assert response.status == 200  # the page itself still loads
    finally:
        await client.close()


@pytest.mark.parametrize(
    "path",
    [
        "/static/missing.js",
        "/static/..%2Fchat.html",
        "/static/cometd/..%2Fpackage.json",
        "/static/cometd/package.json",
        "/static/chat.js.map",
        "/static/%2e%2e/web_pages.py",
        "/static/cometd/nope.js",
    ],
)
async def test_nothing_outside_the_served_files_is_reachable(http: Client, path: str) -> None:
    async with http.get(path) as response:
        assert response.status == 404


async def test_the_gms_server_serves_the_pages() -> None:
    async with TestClient(TestServer(create_app(options=fast_options()))) as client:
        for path in ("/chat", "/desk", "/static/desk.js"):
            async with client.get(path) as response:
                assert response.status == 200, path


@pytest.mark.parametrize(
    ("headers", "challenged"),
    [
        ({}, True),  # GWS clients and curl: asked for Basic credentials
        ({"X-Requested-With": "XMLHttpRequest"}, False),  # the desk's own requests
        ({"X-Requested-With": "XMLHttpRequest", **basic("alice", "wrong")}, False),
        ({"X-Requested-With": "XMLHttpRequest", "Cookie": "JSESSIONID=expired"}, False),
    ],
)
async def test_the_desks_requests_get_a_401_without_a_basic_challenge(
    headers: dict[str, str], challenged: bool
) -> None:
    """A Basic challenge on a page's request with cookies makes the browser prompt for a
    password over the page (headless Chromium hangs): the desk shows its own form instead."""
    app = create_app(options=fast_options(), config=config())
    async with (
        TestClient(TestServer(app)) as client,
        client.get("/api/v2/me", headers=headers) as response,
    ):
        assert response.status == 401
        assert (await response.json())["statusCode"] == 20
        assert ("WWW-Authenticate" in response.headers) is challenged
        if challenged:
            assert response.headers["WWW-Authenticate"] == 'Basic realm="GWS"'
