"""Job events: the append-only history shared by the API and the worker."""

from typing import Any

from sqlalchemy import ScalarSelect, select
from sqlalchemy.orm import Session

from app.core.models import Job, JobEvent


def job_tenant(job_id: str) -> ScalarSelect[str]:
    """The tenant of a job, as a subquery: rows about a job always land in its tenant."""
    return select(Job.tenant_id).where(Job.id == job_id).scalar_subquery()


def add_event(
    session: Session, job_id: str, type_: str, message: str, data: dict[str, Any] | None = None
) -> JobEvent:
    """Append an event to the session; the caller commits with the change it describes."""
    event = JobEvent(
        job_id=job_id, tenant_id=job_tenant(job_id), type=type_, message=message, data=data or {}
    )
    session.add(event)
    return event
