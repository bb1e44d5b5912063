"""Live job events as Server-Sent Events, fed from the database.

Each API process polls the job's events (a cheap indexed query) so any number of API
processes can serve streams without a shared bus. `id:` is the event id; a reconnecting
client's `Last-Event-ID` resumes right after it, without loss or repeats. The stream ends
after the job's terminal status event (the last one: a retried job goes on after its
first), or at once when a client resumes after it (browsers reconnect to a closed stream
with the last id they saw); sse-starlette sends keep-alive comments meanwhile.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse

from app.core.db import get_sessionmaker
from app.core.models import TERMINAL_STATUSES, Job, JobEvent

POLL_S = 0.5
POLL_LIMIT = 500  # events read per poll
KEEPALIVE_S = 15


def _poll(
    database_url: str, job_id: str, after: int, limit: int = POLL_LIMIT
) -> tuple[bool, list[JobEvent]]:
    """Whether the job had ended, then its events after `after`.

    In that order: a job's terminal status commits with its event, so when it had ended
    before the events were read, they hold its last one.
    """
    with get_sessionmaker(database_url)() as session:
        ended = session.scalar(select(Job.status).where(Job.id == job_id)) in TERMINAL_STATUSES
        stmt = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        return ended, list(session.scalars(stmt))


def _is_terminal(event: JobEvent) -> bool:
    return event.type == "status" and event.data.get("status") in TERMINAL_STATUSES


async def _events(database_url: str, job_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
    """Events until the job has ended and its terminal event was sent.

    Not at the first terminal event: a retried job's history goes on after its `failed`
    (queued, running, …), and a stream from the start must follow it to the new end.
    """
    settled = True  # whether the last status event sent was terminal (none: resumed)
    while True:
        ended, batch = await run_in_threadpool(_poll, database_url, job_id, after)
        for event in batch:
            after = event.id
            payload = {
                "id": str(event.id),
                "created_at": event.created_at.isoformat(),
                "type": event.type,
                "message": event.message,
                "data": event.data,
            }
            yield {"id": str(event.id), "event": event.type, "data": json.dumps(payload)}
            if event.type == "status":
                settled = _is_terminal(event)
        if ended and (not batch or (settled and len(batch) < POLL_LIMIT)):  # all sent
            return
        if not batch:
            await asyncio.sleep(POLL_S)


def event_stream(database_url: str, job_id: str, after: int) -> EventSourceResponse:
    """The SSE response for `job_id`, starting after event id `after`."""
    return EventSourceResponse(_events(database_url, job_id, after), ping=KEEPALIVE_S)
