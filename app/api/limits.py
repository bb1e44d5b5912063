"""Request body size limits, enforced while the body streams in.

A pure ASGI middleware: a declared Content-Length over the limit is refused before a byte is
read; a chunked body is counted as it arrives and cut off at the limit. Starlette spools
multipart files to disk past 1 MiB, so an upload is never held whole in memory, and the
spool file of a refused upload is deleted with the request.
"""

import json
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings

# A trailing slash gets the route's own limit: the router then redirects it (307) instead
# of the JSON limit answering a misleading 413.
_PREDICT = re.compile(r"^/v1/models/[^/]+/predict/?$")


def is_upload(path: str) -> bool:
    """Whether `path` is the dataset upload's (a POST there carries an archive)."""
    return path.rstrip("/") == "/v1/datasets"


def body_limit(settings: Settings, method: str, path: str) -> int | None:
    """The byte limit of a request's body, or None for requests without one."""
    if method not in {"POST", "PUT", "PATCH"}:
        return None
    if is_upload(path):
        return settings.max_upload_bytes
    if _PREDICT.match(path):
        return settings.max_predict_bytes
    return settings.max_json_bytes


class BodySizeLimit:
    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings(), scope["method"], scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(scope, send, limit)
            return
        received, exceeded, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    # Ending the body here makes the parser fail; the response is replaced below.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _refuse(scope, send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await _refuse(scope, send, limit)


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "type": "https://finetune.dev/problems/upload_too_large",
            "title": "Payload too large",
            "status": 413,
            "detail": f"the request body is larger than {limit} bytes",
            "code": "upload_too_large",
            "instance": scope["path"],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
