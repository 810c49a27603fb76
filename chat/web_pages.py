"""The web pages: the customer chat page (`/chat`) and the agent desk (`/desk`), their static
files (`/static/...`) and the official CometD JavaScript client (`/static/cometd/...`).

The pages are plain HTML and JavaScript modules (no build step) in `chat/web/`. The CometD
client is not in the repository: `npm ci` in `chat/web` installs the pinned npm `cometd`
into `chat/web/node_modules` (scripts/serve and scripts/test do it). Without it the pages
still load, `/static/cometd/*` answers 503 saying how to install it, and a warning is logged
at start-up, so the cause is never a mystery.

File names in URLs must match a strict pattern (letters, digits, `-`, `_`, one extension), so
no request can reach outside those two directories.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("gms.web")

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
COMETD_DIR = WEB_DIR / "node_modules" / "cometd"
PAGES = {"/chat": "chat.html", "/desk": "desk.html", "/": "index.html"}
COMETD_MISSING = (
    "The CometD JavaScript client is not installed: run `npm ci` in chat/web "
    "(scripts/serve does it), then reload the page."
)
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    # Scripts, styles and connections from this origin only ('self' covers same-origin
    # websockets in current browsers); the CometD client runs its timers in a blob: worker;
    # never framed (the desk's buttons act on chats).
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "worker-src blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate: a server upgrade shows at once


def setup(app: web.Application, cometd_dir: Path = COMETD_DIR) -> None:
    """Add the pages and their static files to `app` (`cometd_dir`: where npm put `cometd`)."""
    if not (cometd_dir / "package.json").is_file():
        log.warning("%s (looked in %s)", COMETD_MISSING, cometd_dir)
    for path, name in PAGES.items():
        app.router.add_get(path, _file_handler(WEB_DIR / name, _PAGE_HEADERS))
    app.router.add_get(r"/static/{name:[A-Za-z0-9_-]+\.(?:js|css)}", _directory_handler(STATIC_DIR))
    app.router.add_get(
        r"/static/cometd/{name:[A-Za-z0-9_]+\.js}", _directory_handler(cometd_dir, COMETD_MISSING)
    )


def _file_handler(path: Path, headers: dict[str, str]) -> Handler:
    async def page(request: web.Request) -> web.StreamResponse:
        return _file(path, headers)

    return page


def _directory_handler(directory: Path, missing: str | None = None) -> Handler:
    """Files of one directory by name; `missing`: the 503 text when the directory is absent
    (an npm package not installed), instead of 404s that would hide the cause."""

    async def files(request: web.Request) -> web.StreamResponse:
        if missing is not None and not directory.is_dir():
            raise web.HTTPServiceUnavailable(text=missing)
        return _file(directory / request.match_info["name"], {})

    return files


def _file(path: Path, headers: dict[str, str]) -> web.StreamResponse:
    if not path.is_file():
        raise web.HTTPNotFound()
    content_type = _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    return web.FileResponse(path, headers={"Content-Type": content_type, **_NO_CACHE, **headers})
