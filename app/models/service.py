"""Model use cases: read, list, locate the weights file, predict."""

from contextlib import nullcontext
from typing import BinaryIO

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.pagination import paginate
from app.core.errors import Invalid, NotFound, field_error
from app.core.exports import stored_record
from app.core.models import Model, owned
from app.core.storage import Storage
from app.models import inference
from app.models.exporter import ExportBuilds


def get(session: Session, tenant: str, model_id: str) -> Model:
    """The tenant's model; another tenant's answers exactly as a missing one."""
    row = owned(session, Model, tenant, model_id)
    if row is None:
        raise NotFound(f"model {model_id} does not exist", code="model_not_found")
    return row


def list_(session: Session, tenant: str, limit: int, after: str | None) -> list[Model]:
    stmt = select(Model).where(Model.tenant_id == tenant)
    return list(session.scalars(paginate(stmt, Model.id, limit, after)))


async def predict(
    session: Session,
    storage: Storage,
    cache: inference.ModelCache,
    tenant: str,
    model_id: str,
    files: list[tuple[str, BinaryIO]],
    top_k: int,
    max_pixels: int,
) -> list[dict]:
    """Top-k predictions for each (filename, upload), in the order sent; every unreadable
    file is named in the 422.

    The blocking parts (a database read, reading and decoding uploads) run in the thread
    pool; the waits, for a model another request is loading and for a shared forward pass,
    run on the event loop (inference.ModelCache.load, inference.probabilities). The
    request's place in the model's bounded queue is taken before any upload is read, so
    that a burst of requests is refused (503) instead of decoding all it sent at once.
    """

    def locate() -> Model:
        row = get(session, tenant, model_id)
        # A request may wait for a load or its micro-batch: hand the pooled connection back
        # first, so that waiting requests never hold the pool against the ones they wait with.
        session.close()
        return row

    def prepare(loaded: inference.LoadedModel) -> np.ndarray:
        images, errors = [], []
        for name, upload in files:
            upload.seek(0)
            try:
                images.append(inference.decode(upload.read(), name, loaded.image_size, max_pixels))
            except Invalid as exc:
                errors.extend(exc.errors or [])
        if errors:
            names = ", ".join(e["file"] for e in errors)
            raise Invalid(f"unreadable image(s): {names}", code="image_invalid", errors=errors)
        if not images:
            raise Invalid(
                "no images sent", code="image_missing", errors=[field_error("files", "required")]
            )
        return inference.normalise(loaded, images)

    row = await run_in_threadpool(locate)
    loaded = await cache.load(row.id, lambda: storage.local(row.storage_key), row.sha256)
    place = inference.reserve(loaded, len(files))
    with place or nullcontext():
        batch = await run_in_threadpool(prepare, loaded)
        probs = await inference.probabilities(loaded, batch, place)
    return [
        {
            "filename": name,
            "label": ranked[0][0],
            "score": ranked[0][1],
            "top_k": [{"label": label, "score": score} for label, score in ranked],
        }
        for (name, _), ranked in zip(files, inference.rank(loaded, probs, top_k), strict=True)
    ]


async def export(
    session: Session,
    storage: Storage,
    builds: ExportBuilds,
    tenant: str,
    model_id: str,
    fmt: str,
) -> tuple[Model, dict]:
    """The checked export of a model, made now if it is not yet (`ExportBuilds`)."""

    def locate() -> tuple[Model, dict | None]:
        row = get(session, tenant, model_id)
        record = stored_record(row, storage, fmt)
        session.close()  # a build is long: hand the pooled connection back first
        return row, record

    row, record = await run_in_threadpool(locate)
    if record is None:
        record = await builds.build(row.id, fmt)
    return row, record
