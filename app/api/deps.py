"""Request-scoped dependencies: settings, one DB session per request, storage."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.db import get_sessionmaker
from app.core.storage import LocalStorage, get_storage

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One session per request; services commit, anything left open is rolled back."""
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


def storage(settings: SettingsDep) -> LocalStorage:
    return get_storage(settings.storage_url)


SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[LocalStorage, Depends(storage)]
