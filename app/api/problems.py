"""The one place where errors become RFC 9457 `application/problem+json` responses."""

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import (
    AppError,
    Invalid,
    RangeNotSatisfiable,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from app.core.storage import unreachable

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    413: "upload_too_large",
}
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class Problem(BaseModel):
    """An RFC 9457 problem document with a stable `code`."""

    type: str = Field(examples=["https://finetune.dev/problems/dataset_not_found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["dataset ds_0192f3a1b2c3d4e5f6a7 does not exist"])
    code: str = Field(examples=["dataset_not_found"])
    instance: str | None = Field(None, examples=["/v1/datasets/ds_0192f3a1b2c3d4e5f6a7"])
    errors: list[dict[str, Any]] | None = Field(
        None,
        examples=[
            [{"field": "body.epochs", "message": "Input should be less than or equal to 1000"}]
        ],
    )


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://finetune.dev/problems/{code}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append(
            {"field": ".".join(loc), "message": err.get("msg", ""), "type": err.get("type", "")}
        )
    return out


def app_error_response(request: Request, exc: AppError) -> JSONResponse:
    """The problem+json of one of the service's errors, with the headers its kind calls for."""
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unavailable):  # e.g. the prediction queue is full
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    return problem_response(
        request,
        exc.status,
        exc.code,
        exc.detail,
        title=exc.title,
        errors=exc.errors,
        headers=headers or None,
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return app_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        fields = ", ".join(e["field"] for e in errors[:5])
        return problem_response(
            request,
            422,
            "validation_error",
            f"invalid request: {fields}",
            title=Invalid.title,  # one title for every 422 (RFC 9110's name, not HTTPStatus's)
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(
            exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        )
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return problem_response(request, exc.status_code, code, str(exc.detail), headers=headers)


def allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405 (RFC 9110, 15.5.6): every method some route answers on
    this path. Starlette names only the first route whose path matched, so `GET /v1/jobs`
    and `POST /v1/jobs`, two routes, answered a DELETE with `Allow: POST`. HEAD goes with
    GET (app.api.head)."""
    routes = request.app.router.routes
    allowed = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    }
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(m for m in _METHODS if m in allowed)


class CatchUnhandled:
    """Turns an unhandled exception into a 500 problem, inside the request-id middleware (so
    the log line and the response carry the request's id) and without a trace to the client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            incident = uuid.uuid4().hex[:12]
            log.exception("unhandled error %s on %s %s", incident, scope["method"], scope["path"])
            if started:
                raise
            status, code, detail = 500, "internal_error", "internal error"
            if (down := _out_of_reach(exc)) is not None:
                status, code, detail = 503, f"{down}_unavailable", f"{down} did not answer"
            detail += f"; reference {incident} in the server log"
            headers = {"Retry-After": "5"} if status == 503 else None
            response = problem_response(Request(scope), status, code, detail, headers=headers)
            await response(scope, receive, send)


def _out_of_reach(exc: BaseException) -> str | None:
    """`database` or `storage` when `exc` says that one did not answer (the same request may
    succeed shortly: a 503, not a 500), else None."""
    if isinstance(exc, OperationalError):
        return "database"
    if unreachable(exc):
        return "storage"
    return None


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's own problem statuses (app.api.openapi adds the
    ones every route shares: 401, 413, 422, 429, 500, 503)."""
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }
