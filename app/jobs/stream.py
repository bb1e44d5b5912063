"""Live job events as Server-Sent Events, fed from the database.

Each API process polls the job's events (a cheap indexed query) so any number of API
processes can serve streams without a shared bus. `id:` is the event id; a reconnecting
client's `Last-Event-ID` resumes right after it, without loss or repeats. The stream ends
after the job's terminal status event; sse-starlette sends keep-alive comments meanwhile.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse

from app.core.db import get_sessionmaker
from app.core.models import TERMINAL_STATUSES, JobEvent

POLL_S = 0.5
KEEPALIVE_S = 15


def _newer(database_url: str, job_id: str, after: int, limit: int = 500) -> list[JobEvent]:
    with get_sessionmaker(database_url)() as session:
        stmt = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        return list(session.scalars(stmt))


def _is_terminal(event: JobEvent) -> bool:
    return event.type == "status" and event.data.get("status") in TERMINAL_STATUSES


async def _events(database_url: str, job_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
    while True:
        batch = await run_in_threadpool(_newer, database_url, job_id, after)
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
            if _is_terminal(event):
                return
        if not batch:
            await asyncio.sleep(POLL_S)


def event_stream(database_url: str, job_id: str, after: int) -> EventSourceResponse:
    """The SSE response for `job_id`, starting after event id `after`."""
    return EventSourceResponse(_events(database_url, job_id, after), ping=KEEPALIVE_S)
