"""Serve the dashboard: `/` is the page, `/ui/<file>` its scripts and styles.

The page is plain HTML, CSS and ES modules (no build step, no CDN), so a fixed set of files
is served from the package; nothing else in the directory or outside it can be asked for.
These routes stay out of the OpenAPI document: they are not part of the API.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.core.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page only talks to its own origin; blob: for fetched plots and downloads.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# `no-cache` = revalidate each time (ETag/Last-Modified): an upgrade never serves stale JS.
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
}

router = APIRouter(include_in_schema=False)


def _assets() -> dict[str, Path]:
    """The servable files by name, read once: the package ships them flat."""
    return {
        path.name: path
        for path in sorted(STATIC_DIR.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


ASSETS = _assets()


def _file(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise NotFound(f"no dashboard file named {name!r}", code="not_found")
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=HEADERS)


@router.get("/")
def index() -> FileResponse:
    """The dashboard page."""
    return _file("index.html")


@router.get("/ui/{name}")
def asset(name: str) -> FileResponse:
    """One of the page's scripts or stylesheets."""
    return _file(name)
