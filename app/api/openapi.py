"""The OpenAPI document, completed: every error response is problem+json.

FastAPI documents 422 as its own `HTTPValidationError` and knows nothing of the responses
that dependencies (401, 429) and middleware (413) produce; this rewrites them in one place.
"""

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.problems import Problem
from app.core.config import Settings

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
DESCRIPTIONS = {
    "400": "Malformed request: a `Range` header, or a multipart body that does not parse",
    "401": "Missing or invalid API key",
    "404": "Not found (also another tenant's resource)",
    "409": "Conflict with the resource's state",
    "413": "Request body too large",
    "422": "Invalid request; `errors` names each bad field or file",
    "416": "`Range` beyond the end of the file; `Content-Range` gives its size",
    "429": "Rate limited; see Retry-After",
    "500": "Internal error; the detail holds a reference for the server log",
    "503": "Unavailable for now (the prediction queue is full, or the database or storage "
    "did not answer); retry after Retry-After",
}


def _too_large(limit: str) -> str:
    """The 413's detail (app.api.limits) under the default of setting `limit`."""
    return f"the request body is larger than {int(Settings.model_fields[limit].default)} bytes"


def _too_many(action: str, rule: str) -> str:
    """The 429's detail (app.api.ratelimit) under the default of setting `rule`."""
    return f"too many {action} for this tenant: at most {Settings.model_fields[rule].default}"


# One typical problem per status, with a code users will meet (app/core/errors.py).
EXAMPLES = {
    "400": ("bad_request", "There was an error parsing the body", None),
    "401": ("unauthorized", "missing or invalid API key", None),
    "404": ("{kind}_not_found", "{kind} {id} does not exist", None),
    "413": ("upload_too_large", _too_large("max_json_bytes"), None),
    "416": (
        "range_not_satisfiable",
        "Range 'bytes=90000000-' is beyond the file's 44786837 bytes",
        None,
    ),
    "422": (
        "validation_error",
        "invalid request: body.epochs",
        [{"field": "body.epochs", "message": "Input should be less than or equal to 1000"}],
    ),
    "429": ("rate_limited", _too_many("job submissions", "rate_limit_jobs"), None),
    "500": ("internal_error", "internal error; reference 7f3a9c2e1b4d in the server log", None),
    "503": (
        "database_unavailable",
        "database did not answer; reference 7f3a9c2e1b4d in the server log",
        None,
    ),
}
TITLES = {
    "400": "Bad request",
    "401": "Unauthorized",
    "404": "Not found",
    "409": "Conflict",
    "413": "Payload too large",
    "416": "Range not satisfiable",
    "422": "Unprocessable content",
    "429": "Too many requests",
    "500": "Internal server error",
    "503": "Service unavailable",
}


def _header(description: str, example: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if example is not None:
        schema["example"] = example
    return {"description": description, "schema": schema}


REQUEST_ID = _header("The request's id, as in the server's log lines", "3f2b7c1d9e8a4b6c")
RETRY_AFTER = _header("Seconds to wait before trying again", "5")
ETAG = _header("The file's sha256, quoted (strong ETag)")
CONTENT_RANGE = _header("The bytes sent, or the file's size on a 416", "bytes */44786837")
# Example ids in the documents, by path parameter.
IDS = {
    "dataset_id": "ds_0192f3a1b2c3d4e5f6a7b8",
    "job_id": "job_0192f3a1b2c3d4e5f6a7b8",
    "model_id": "mdl_0192f3a1b2c3d4e5f6a7b8",
    "checkpoint_id": "ckpt_0192f3a1b2c3d4e5f6a7b8",
    "name": "curves",
}


def _example_path(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: IDS.get(m[1], m[1]), path)


CONFLICTS = {  # by path
    "/v1/jobs/{job_id}/retry": (
        "job_not_retryable",
        "job {id} is succeeded; only failed jobs can be retried",
    ),
    "/v1/jobs/{job_id}/cancel": ("job_not_cancellable", "job {id} is already succeeded"),
    "/v1/datasets/{dataset_id}": (
        "dataset_in_use",
        "dataset {id} is used by a queued or running job",
    ),
}


# Examples that differ by path: (status, path) → (code, detail).
BY_PATH = {
    ("400", "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/content"): (
        "range_invalid",
        "Range header: Only support bytes range",
    ),
    ("400", "/v1/models/{model_id}/content"): (
        "range_invalid",
        "Range header: Only support bytes range",
    ),
    ("413", "/v1/datasets"): ("upload_too_large", _too_large("max_upload_bytes")),
    ("413", "/v1/models/{model_id}/predict"): ("upload_too_large", _too_large("max_predict_bytes")),
    ("429", "/v1/datasets"): ("rate_limited", _too_many("uploads", "rate_limit_uploads")),
    ("500", "/v1/models/{model_id}/content"): (
        "export_failed",
        "onnx export differs from the torch model by 3.20e-02",
    ),
}


def _problem(status: str, path: str) -> dict[str, Any]:
    code, detail, errors = EXAMPLES.get(status, ("error", "error", None))
    if status == "409":
        code, detail = CONFLICTS.get(path, ("conflict", "conflict with the resource's state"))
    code, detail = BY_PATH.get((status, path), (code, detail))
    segment = path.split("/")[2] if path.startswith("/v1/") else ""
    kind = {"datasets": "dataset", "jobs": "job", "models": "model"}.get(segment, "job")
    code, detail = code.format(kind=kind), detail.format(kind=kind, id=IDS[f"{kind}_id"])
    example: dict[str, Any] = {
        "type": f"https://finetune.dev/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": int(status),
        "detail": detail,
        "code": code,
        "instance": _example_path(path),
    }
    if errors:
        example["errors"] = errors
    description = DESCRIPTIONS.get(status, "Error")
    if code == "export_failed":
        description += "; `export_failed`: an export could not be made or disagreed with torch"
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM_REF, "example": example}},
    }
    if status in {"429", "503"}:
        response["headers"] = {"Retry-After": RETRY_AFTER}
    return response


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[str]:
    statuses = {"500"}
    if operation.get("parameters") or operation.get("requestBody"):
        statuses.add("422")  # only where something is parsed
    if path.startswith("/v1/"):
        statuses |= {"401", "503"}
        if "{" in path:
            statuses.add("404")
        if method in {"post", "put", "patch"}:
            statuses.add("413")
    if (path, method) in {("/v1/datasets", "post"), ("/v1/jobs", "post")}:
        statuses.add("429")
    if path.endswith("/content"):
        statuses |= {"400", "416"}  # a Range header (app.api.files)
    if "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):
        statuses.add("400")  # a body that does not parse as multipart
    return statuses


def _headers(path: str, method: str, status: str, response: dict[str, Any]) -> None:
    """Document the headers the service sets: every response's request id, and more."""
    headers = response.setdefault("headers", {})
    headers["X-Request-ID"] = REQUEST_ID
    if method == "post" and status in {"201", "202"} and path in {"/v1/datasets", "/v1/jobs"}:
        kind = path.removeprefix("/v1/").removesuffix("s")
        headers["Location"] = _header("The new resource", f"{path}/{IDS[f'{kind}_id']}")
    if status in {"200", "206", "304"} and path.endswith("/content"):
        headers["ETag"] = ETAG
    if status in {"206", "416"} and path.endswith("/content"):
        headers["Content-Range"] = CONTENT_RANGE


def complete(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            wanted = _statuses(path, method, operation) | {s for s in responses if s[0] == "4"}
            if path == "/readyz":
                wanted -= {"503"}  # its 503 is the readiness report, not a problem
            for status in wanted:
                responses[status] = _problem(status, path)
            for status, response in responses.items():
                _headers(path, method, status, response)
    return schema


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
