"""Downloads of stored weights files, with the sha256 as a strong ETag."""

from fastapi import Request, Response
from fastapi.responses import FileResponse

from app.core.storage import Storage

SAFETENSORS = "application/octet-stream"


def weights_file_response(
    request: Request, storage: Storage, key: str, sha256: str, filename: str
) -> Response:
    """The file, or 304 when the client already holds this exact content."""
    etag = f'"{sha256}"'
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(
        storage.local(key),
        media_type=SAFETENSORS,
        filename=filename,
        headers={"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"},
    )
