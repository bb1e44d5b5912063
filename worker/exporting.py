"""The `cpu` queue's work: a new model's exports, made before anyone asks for them."""

import logging

from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.errors import AppError
from app.core.exports import FORMATS, ensure_export
from app.core.models import Model
from app.core.storage import get_storage

log = logging.getLogger(__name__)


def export_model(settings: Settings, model_id: str) -> None:
    """Export `model_id` in every format; a format that fails is left to on-demand export.

    A failed export is not retried here: the API makes it on request and answers the
    failure to the user who asked, which is where the message is useful.
    """
    storage = get_storage(settings)
    with get_sessionmaker(settings.database_url)() as session:
        model = session.get(Model, model_id)
        if model is None:
            log.info("model %s no longer exists; nothing to export", model_id)
            return
        for fmt in FORMATS:
            try:
                record = ensure_export(session, model, storage, fmt)
            except AppError as exc:
                session.rollback()
                log.warning("export of %s as %s failed: %s", model_id, fmt, exc)
                continue
            log.info(
                "model %s exported as %s (max diff %.2e)", model_id, fmt, record["max_abs_diff"]
            )
