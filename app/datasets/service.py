"""Dataset use cases: validate and store uploads, list, get, delete."""

import hashlib
import logging
import re
import shutil
import time
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete as sql_delete
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.api.pagination import paginate
from app.core import ids
from app.core.config import Settings
from app.core.errors import Conflict, NotFound
from app.core.hostcache import STALE_SCRATCH_S
from app.core.ids import new_id
from app.core.models import ACTIVE_STATUSES, Dataset, Job, owned
from app.core.storage import Storage, discard, host_cache, unreachable
from app.datasets.archive import Limits, extract_dataset

CHUNK = 1 << 20

log = logging.getLogger(__name__)


def _stage_upload(src: BinaryIO, dest: Path) -> tuple[int, str]:
    """Stream the upload to disk chunk by chunk; return (bytes, sha256)."""
    digest, size = hashlib.sha256(), 0
    with dest.open("wb") as out:
        while block := src.read(CHUNK):
            digest.update(block)
            size += len(block)
            out.write(block)
    return size, digest.hexdigest()


def archive_limits(settings: Settings) -> Limits:
    return Limits(
        max_members=settings.max_archive_members,
        max_total_bytes=settings.max_extracted_bytes,
        max_ratio=settings.max_compression_ratio,
        max_image_pixels=settings.max_image_pixels,
        max_image_bytes=settings.max_image_bytes,
    )


# Postgres refuses NUL in text, and no other control character belongs in a name either.
_CONTROL_CHARS = r"\x00-\x1f\x7f"
DISPLAY_NAME = f"^[^{_CONTROL_CHARS}]*$"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")


def _display_name(name: str | None, filename: str | None) -> str:
    """The name given (the API checked it), else the file's name without control characters."""
    if name and name.strip():
        return name.strip()[:200]
    stem = Path(_CONTROL.sub("", filename or "dataset")).name
    for suffix in (".gz", ".tgz", ".tar", ".zip"):
        stem = stem.removesuffix(suffix)
    return stem[:200] or "dataset"


def create(
    session: Session,
    settings: Settings,
    storage: Storage,
    tenant: str,
    upload: BinaryIO,
    filename: str | None,
    name: str | None,
) -> Dataset:
    """Validate the whole archive, move its images into storage, then record the row."""
    dataset_id = new_id(ids.DATASET)
    staging = settings.uploads_dir / dataset_id
    staging.mkdir(parents=True)
    key = f"datasets/{dataset_id}"
    try:
        archive = staging / "upload"
        size, sha256 = _stage_upload(upload, archive)
        report = extract_dataset(archive, staging / "dataset", archive_limits(settings))
        _store(storage, staging / "dataset", key)
        row = Dataset(
            id=dataset_id,
            tenant_id=tenant,
            name=_display_name(name, filename),
            num_images=len(report.entries),
            classes=report.classes,
            class_counts=report.class_counts,
            splits=report.splits,
            size_bytes=size,
            sha256=sha256,
            warnings=report.warnings,
            report=report.report,
            storage_key=key,
        )
        session.add(row)
        try:
            session.commit()
        except BaseException as exc:
            session.rollback()
            landed = _committed(session, dataset_id)
            if landed and isinstance(exc, Exception):  # only the answer was lost: success
                return session.get(Dataset, dataset_id)  # type: ignore[return-value]
            if landed is False:
                discard(storage, key)
            raise
        return row
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _committed(session: Session, dataset_id: str) -> bool | None:
    """Whether the dataset's row is in the database after a commit that raised, or None
    when the database cannot say.

    One whose answer was lost may have landed: then the upload succeeded, and deleting its
    files would leave a row whose every job fails. When the database cannot say, the files
    stay: the orphan sweep frees them if no row names them (sweep_orphans).
    """
    try:
        found = session.get(Dataset, dataset_id, populate_existing=True) is not None
    except Exception:
        log.warning("could not tell whether dataset %s was recorded", dataset_id, exc_info=True)
        session.rollback()
        return None
    session.commit()  # end the read; the row, if found, stays loaded
    return found


def _store(storage: Storage, images: Path, key: str) -> None:
    """Move the checked images into storage, or remove what went up before a failure.

    Unless the store did not answer at all (a 503, see app.api.problems): then trying would
    only make the caller wait another timeout; no row names the key, and `sweep_orphans`
    frees it later."""
    try:
        storage.put_dir(images, key)
    except Exception as exc:
        if unreachable(exc):
            log.warning("dataset upload: storage did not answer; %s may hold part of it", key)
            raise
        discard(storage, key)
        raise


def get(session: Session, tenant: str, dataset_id: str) -> Dataset:
    """The tenant's dataset; another tenant's answers exactly as a missing one."""
    row = owned(session, Dataset, tenant, dataset_id)
    if row is None:
        raise NotFound(f"dataset {dataset_id} does not exist", code="dataset_not_found")
    return row


def list_(session: Session, tenant: str, limit: int, after: str | None) -> list[Dataset]:
    stmt = paginate(select(Dataset).where(Dataset.tenant_id == tenant), Dataset.id, limit, after)
    return list(session.scalars(stmt))


def delete(
    session: Session, settings: Settings, storage: Storage, tenant: str, dataset_id: str
) -> None:
    """Delete a dataset no queued or running job needs; finished jobs keep their models.

    Its decoded images go from this host's cache at once; other hosts drop their copies at
    their next round (app.core.storage.forget_deleted_datasets).
    """
    row = get(session, tenant, dataset_id)
    # A job being created on it holds a key-share lock on the row (its foreign key) until it
    # commits: on Postgres this waits for it, so the check below sees that job. One
    # conditional statement, so that on SQLite nothing commits between check and delete.
    locked = select(Dataset.id).where(Dataset.id == dataset_id).with_for_update()
    if session.execute(locked).first() is None:  # another delete got there first
        raise NotFound(f"dataset {dataset_id} does not exist", code="dataset_not_found")
    unused = ~exists().where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES))
    if not session.execute(sql_delete(Dataset).where(Dataset.id == dataset_id, unused)).rowcount:
        session.rollback()
        raise Conflict(
            f"dataset {dataset_id} is used by a queued or running job", code="dataset_in_use"
        )
    session.commit()
    discard(storage, row.storage_key)  # the dataset is gone for its users either way
    host_cache(settings).discard_decoded(dataset_id)


def sweep_orphans(
    session: Session, storage: Storage, older_than_s: float = STALE_SCRATCH_S
) -> list[str]:
    """Remove stored datasets no row names that nothing changed for `older_than_s`; return
    their keys.

    Left by an upload the store stopped answering (see `_store`), an API killed between
    storing and recording, or a delete whose store call failed. The age spares an upload in
    flight: its files are stored moments before its row is committed."""
    names = [name for name in storage.children("datasets") if name.startswith("ds_")]
    keys = [f"datasets/{name}" for name in names]
    known = set(session.scalars(select(Dataset.storage_key).where(Dataset.storage_key.in_(keys))))
    session.commit()  # no transaction held across the store's calls
    cutoff = time.time() - older_than_s
    removed = [key for key in keys if key not in known and not storage.changed_since(key, cutoff)]
    for key in removed:
        storage.delete(key)
    return removed
