"""Job events: the append-only history shared by the API and the worker."""

from typing import Any

from sqlalchemy.orm import Session

from app.core.models import JobEvent


def add_event(
    session: Session, job_id: str, type_: str, message: str, data: dict[str, Any] | None = None
) -> JobEvent:
    """Append an event to the session; the caller commits with the change it describes."""
    event = JobEvent(job_id=job_id, type=type_, message=message, data=data or {})
    session.add(event)
    return event
