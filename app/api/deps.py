"""Request-scoped dependencies: settings, one DB session per request, storage, the tenant."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.db import get_sessionmaker
from app.core.errors import Unauthorized
from app.core.keys import tenant_for_key
from app.core.models import LOCAL_TENANT
from app.core.storage import Storage, get_storage

SettingsDep = Annotated[Settings, Depends(get_settings)]
bearer = HTTPBearer(auto_error=False, description="An API key from `finetune keys create`.")


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One session per request; services commit, anything left open is rolled back."""
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


def storage(settings: SettingsDep) -> Storage:
    return get_storage(settings)


SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(storage)]


def current_tenant(
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The caller's tenant: from its key, or the local tenant when keys are not required."""
    if credentials is None:
        if settings.auth_required:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        return LOCAL_TENANT
    tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise Unauthorized("the API key is not valid")
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
