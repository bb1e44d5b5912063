"""An upload refused before its body is read: a missing or unknown key where keys are
required (401), or a tenant over its upload rate (429).

FastAPI reads a multipart body whole, spooling its files to disk, before it runs the
route's dependencies, where the key and the rate limit are checked: a client without a
valid key could make the API receive and spool 10 GiB per connection. This middleware asks
the same questions first, from the headers alone, with the session a route would get
(dependency overrides included). It counts nothing: the route still decides, and counts,
for every request let through. When the database does not answer, it lets the request
through and the route gives its own 503.
"""

import logging

from fastapi.concurrency import run_in_threadpool
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import get_session, key_tenant, keyless_tenant
from app.api.limits import is_upload
from app.api.problems import app_error_response
from app.api.ratelimit import check
from app.core.db import get_sessionmaker
from app.core.errors import AppError, Unauthorized

log = logging.getLogger(__name__)


class EarlyUploadRefusal:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and is_upload(scope["path"]):
            request = Request(scope)
            try:
                await run_in_threadpool(_admit, request)
            except AppError as exc:
                await app_error_response(request, exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _admit(request: Request) -> None:
    """Raise the 401 or 429 the route would give this request, if it is sure to."""
    state = request.app.state
    # Read as the route's HTTPBearer(auto_error=False) reads it: no credentials unless both
    # parts are there and the scheme is Bearer.
    scheme, key = get_authorization_scheme_param(request.headers.get("authorization"))
    if not (scheme and key) or scheme.lower() != "bearer":
        tenant = keyless_tenant(state.settings)
    else:
        try:
            tenant = _key_tenant(request, key)
        except Unauthorized:
            raise
        except Exception:  # the database is away: the route answers for itself
            log.debug("key not checked before the upload's body", exc_info=True)
            return
    check(state.rate_limiter, tenant, "uploads", state.settings.rate_limit_uploads, count=False)


def _key_tenant(request: Request, key: str) -> str:
    override = request.app.dependency_overrides.get(get_session)
    if override is not None:  # the session the route will get
        return key_tenant(override(), key)
    with get_sessionmaker(request.app.state.settings.database_url)() as session:
        return key_tenant(session, key)
