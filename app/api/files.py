"""Downloads of stored weights files, with the sha256 as a strong ETag."""

from typing import Any

from fastapi import Request, Response
from fastapi.responses import FileResponse
from starlette.responses import MalformedRangeHeader
from starlette.responses import RangeNotSatisfiable as RangeBeyondEnd

from app.api.head import HEAD
from app.core.errors import AppError, RangeNotSatisfiable
from app.core.storage import Storage

SAFETENSORS = "application/octet-stream"


def download_responses(description: str) -> dict[int | str, dict[str, Any]]:
    """The success answers of a download route, for its OpenAPI `responses`."""
    return {
        200: {"content": {SAFETENSORS: {}}, "description": description},
        206: {
            "content": {SAFETENSORS: {}},
            "description": "The bytes a `Range` header asked for (`Content-Range` says which)",
        },
        304: {"description": "Not modified: `If-None-Match` holds this file's ETag"},
    }


def weights_file_response(
    request: Request, storage: Storage, key: str, sha256: str, size: int, filename: str
) -> Response:
    """The file, or 304 when the client already holds this exact content.

    A HEAD (app.api.head) gets the headers from the row's size and sha256: the file is not
    read, nor fetched from a remote store.
    """
    etag = f'"{sha256}"'
    held = request.headers.get("if-none-match", "")
    if etag in held or held.strip() == "*":  # "*": any version the client holds (RFC 9110)
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if request.scope.get(HEAD):
        response = FileResponse(key, media_type=SAFETENSORS, filename=filename, headers=headers)
        _check_range(request, response, size)
        headers = {**response.headers, "content-length": str(size), "accept-ranges": "bytes"}
        return Response(headers=headers)
    path = storage.local(key)
    response = FileResponse(
        path, media_type=SAFETENSORS, filename=filename, headers=headers, stat_result=path.stat()
    )
    _check_range(request, response, size)
    return response


def _check_range(request: Request, response: FileResponse, size: int) -> None:
    """Refuse a `Range` `response` would refuse, as problem+json: FileResponse answers a
    malformed one (400) and one beyond the end (416) in text/plain, outside the app's error
    handlers.

    Asked with FileResponse's own rules, so the two agree on what is valid, and on when an
    `If-Range` makes the Range moot: unless it is the response's ETag or its Last-Modified
    date (which a HEAD, answered from the row, does not have), the whole file is sent,
    whatever the Range says.
    """
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is None:
        return
    if if_range is not None and (
        if_range.startswith("W/")
        or if_range not in (response.headers.get("etag"), response.headers.get("last-modified"))
    ):
        return
    try:
        FileResponse._parse_range_header(wanted, size)
    except MalformedRangeHeader as exc:
        reason = exc.content.removeprefix("Range header: ")  # some of Starlette's say so
        raise AppError(f"Range header: {reason}", code="range_invalid") from None
    except RangeBeyondEnd:
        raise RangeNotSatisfiable(
            f"Range {wanted!r} is beyond the file's {size} bytes", size=size
        ) from None
