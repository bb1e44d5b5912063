"""HEAD answered wherever GET is, as HTTP requires of every server (RFC 9110, 9.3.2).

FastAPI routes only the methods named, so HEAD got a 405 everywhere, also where it is
most useful: a download's size and ETag before fetching it. This middleware routes a HEAD
as its GET; the server sends the headers and drops the body (uvicorn and h11 do for every
HEAD, whatever the app sends). The scope keeps `HEAD` set, so that a download answers from
its row instead of reading the file (app.api.files). The OpenAPI document keeps listing
GET alone. Not for event streams: their body never ends, so that response would never
complete.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

HEAD = "finetune.head"  # scope key: this GET answers a HEAD


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            accept = dict(scope["headers"]).get(b"accept", b"")
            if b"text/event-stream" not in accept:
                scope = {**scope, "method": "GET", HEAD: True}
        await self.app(scope, receive, send)
