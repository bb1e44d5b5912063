"""The service's exception tree: services raise these, `app.api.problems` maps them to HTTP."""

from typing import Any


class AppError(Exception):
    """Base of every error a client may see; `code` is a stable snake_case word."""

    status = 400
    title = "Bad request"
    code = "bad_request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.errors = errors


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"
    code = "unauthorized"


class TooManyRequests(AppError):
    status = 429
    title = "Too many requests"
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class NotFound(AppError):
    status = 404
    title = "Not found"
    code = "not_found"


class Conflict(AppError):
    status = 409
    title = "Conflict"
    code = "conflict"


class Invalid(AppError):
    """The request is well-formed but its content cannot be accepted (422)."""

    status = 422
    title = "Unprocessable content"
    code = "invalid"


class PayloadTooLarge(AppError):
    status = 413
    title = "Payload too large"
    code = "upload_too_large"


class RangeNotSatisfiable(AppError):
    """A `Range` beyond a download's end (416); `Content-Range` gives the file's size."""

    status = 416
    title = "Range not satisfiable"
    code = "range_not_satisfiable"

    def __init__(self, detail: str, *, size: int) -> None:
        super().__init__(detail)
        self.size = size


class Unavailable(AppError):
    status = 503
    title = "Service unavailable"
    code = "unavailable"
    retry_after = 1  # seconds: a full prediction queue drains within a few forward passes


def field_error(field: str, message: str, **extra: Any) -> dict[str, Any]:
    """One entry of a problem's `errors` list, naming the offending field or file."""
    return {"field": field, "message": message, **extra}
