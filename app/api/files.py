"""Downloads of stored weights files, with the sha256 as a strong ETag."""

from fastapi import Request, Response
from fastapi.responses import FileResponse

from app.api.head import HEAD
from app.core.storage import Storage

SAFETENSORS = "application/octet-stream"


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
    response = FileResponse(
        storage.local(key) if not request.scope.get(HEAD) else key,
        media_type=SAFETENSORS,
        filename=filename,
        headers={"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"},
    )
    if request.scope.get(HEAD):
        headers = {**response.headers, "content-length": str(size), "accept-ranges": "bytes"}
        return Response(headers=headers)
    return response
