"""Request-scoped dependencies: settings, one DB session per request, storage, the tenant.

FastAPI runs every plain `def` dependency in its thread pool: one thread hop each, on
every request. Those that never block (settings, storage, the tenant without a key) are
`async def`, so a GET pays only the hops of its endpoint and of closing its session; the
key lookup, which queries the database, still runs in the pool.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.errors import Unauthorized
from app.core.keys import tenant_for_key
from app.core.models import LOCAL_TENANT
from app.core.storage import Storage


async def app_settings(request: Request) -> Settings:
    """The settings `create_app` was built with (tests pass their own)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]
bearer = HTTPBearer(auto_error=False, description="An API key from `finetune keys create`.")


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """One session per request; services commit, anything left open is rolled back.

    A new session holds no connection, so it is made on the event loop. Closing one that
    still holds a transaction rolls it back over the network: that happens in the pool.
    """
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def storage(request: Request) -> Storage:
    """The backend `create_app` built once (an fsspec filesystem is not free to set up)."""
    return request.app.state.storage


# Closed as soon as the endpoint has built its response, before the body is sent: a
# download or an SSE stream would otherwise hold a pooled connection, idle in a
# transaction, for as long as the client takes to read it (hours for a job's events).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StorageDep = Annotated[Storage, Depends(storage)]


def keyless_tenant(settings: Settings) -> str:
    """The tenant of a request without a key: the local one, unless keys are required."""
    if settings.auth_required:
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    return LOCAL_TENANT


def key_tenant(session: Session, key: str) -> str:
    """The tenant of `key` (a query); Unauthorized when no such key is live."""
    tenant = tenant_for_key(session, key)
    if tenant is None:
        raise Unauthorized("the API key is not valid")
    return tenant


async def current_tenant(
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The caller's tenant: from its key, or the local tenant when keys are not required."""
    if credentials is None:
        return keyless_tenant(settings)
    return await run_in_threadpool(key_tenant, session, credentials.credentials)


TenantDep = Annotated[str, Depends(current_tenant)]


def single_parts(*names: str) -> Any:
    """A dependency refusing a multipart body that repeats any of `names`.

    FastAPI keeps the last of repeated parts for a field declared as one value, so an upload
    sending `file` twice would store the second archive and drop the first without a word.
    The body is parsed once: this reads the form FastAPI already parsed.
    """

    async def check(request: Request) -> None:
        form = await request.form()
        errors = [
            {"loc": ("body", name), "msg": "sent more than once; send one", "type": "repeated"}
            for name in names
            if len(form.getlist(name)) > 1
        ]
        if errors:
            raise RequestValidationError(errors)

    return Depends(check)
