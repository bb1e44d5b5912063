"""The OpenAPI document, completed: every error response is problem+json.

FastAPI documents 422 as its own `HTTPValidationError` and knows nothing of the responses
that dependencies (401, 429) and middleware (413) produce; this rewrites them in one place.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.problems import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
DESCRIPTIONS = {
    "401": "Missing or invalid API key",
    "404": "Not found (also another tenant's resource)",
    "409": "Conflict with the resource's state",
    "413": "Request body too large",
    "422": "Invalid request; `errors` names each bad field or file",
    "429": "Rate limited; see Retry-After",
    "500": "Internal error; the detail holds a reference for the server log",
    "503": "Unavailable for now (the prediction queue is full, or the database or storage "
    "did not answer); retry shortly",
}


def _problem(status: str) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS.get(status, "Error"),
        "content": {"application/problem+json": {"schema": PROBLEM_REF}},
    }


def _statuses(path: str, method: str) -> set[str]:
    statuses = {"422", "500"}
    if path.startswith("/v1/"):
        statuses |= {"401", "503"}
        if "{" in path:
            statuses.add("404")
        if method in {"post", "put", "patch"}:
            statuses.add("413")
    if (path, method) in {("/v1/datasets", "post"), ("/v1/jobs", "post")}:
        statuses.add("429")
    return statuses


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
            wanted = _statuses(path, method) | {s for s in responses if s[0] == "4"}
            if path == "/readyz":
                continue  # its 503 is the readiness report, not a problem
            if path in {"/livez", "/readyz"}:
                wanted -= {"422"}
            for status in wanted:
                responses[status] = _problem(status)
    return schema


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
