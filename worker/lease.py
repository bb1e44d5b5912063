"""A running attempt's lease: renewed in a background thread, and the fence of its writes.

Every write of an attempt is conditional on (job id, status running, attempts = this
attempt). When the reaper has given the job to another attempt, the fence no longer
matches: the stale worker's writes change nothing and it stops itself.
"""

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import end_if_idle
from app.core.events import add_event
from app.core.models import Job, JobStatus, utcnow
from worker.retry import retrying

log = logging.getLogger(__name__)


class AttemptInterrupted(Exception):
    """This attempt must stop: `lease_lost` (another owns the job), `shutdown` or `parent_lost`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Lease:
    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, attempt: int, lease_s: float
    ) -> None:
        self.sessions, self.job_id, self.attempt, self.lease_s = sessions, job_id, attempt, lease_s
        self.lost = threading.Event()
        self.release_reason: str | None = None
        self._stop = threading.Event()
        self._parent = os.getppid()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def fence(self) -> tuple[Any, ...]:
        return (
            Job.id == self.job_id,
            Job.status == JobStatus.running,
            Job.attempts == self.attempt,
        )

    def expiry(self):  # type: ignore[no-untyped-def]
        return utcnow() + timedelta(seconds=self.lease_s)

    def start(self) -> "Lease":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def request_release(self, reason: str) -> None:
        """Ask the training loop to stop at its next check and hand the job back."""
        self.release_reason = self.release_reason or reason

    def check(self) -> None:
        """Raise AttemptInterrupted when this attempt must stop now."""
        if self.lost.is_set():
            raise AttemptInterrupted("lease_lost")
        if self.release_reason:
            raise AttemptInterrupted(self.release_reason)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session for one of this attempt's writes: the database ends it (and frees the
        job row) should this process freeze in it for a lease (app.core.db.end_if_idle)."""
        with self.sessions() as session:
            end_if_idle(session, self.lease_s)
            yield session

    def add_event(self, kind: str, message: str, data: dict[str, Any]) -> None:
        """Add an event to the job if this attempt still owns it (one retried transaction);
        once it does not, the event is dropped: it would tell about another attempt."""

        def write() -> None:
            with self.transaction() as session:
                if session.scalar(select(Job.id).where(*self.fence())) is not None:
                    add_event(session, self.job_id, kind, message, data)
                session.commit()

        retrying(write)

    def renew(self) -> bool:
        with self.transaction() as session:
            renewed = session.execute(
                update(Job).where(*self.fence()).values(lease_expires_at=self.expiry())
            ).rowcount
            session.commit()
        return bool(renewed)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.lease_s / 3):
            if os.getppid() != self._parent:  # the Celery main process died (kill -9)
                self.request_release("parent_lost")
            try:
                began = time.monotonic()
                renewed = self.renew()
                done = time.monotonic()
                gap = done - last
                if gap > self.lease_s / 2:  # the reaper hands the job on once gap > lease_s
                    log.warning(
                        "job %s attempt %d: lease renewed %.1f s after the last one (lease %g s;"
                        " the renewal itself took %.1f s): this process is short of CPU or the"
                        " database is slow",
                        self.job_id,
                        self.attempt,
                        gap,
                        self.lease_s,
                        done - began,
                    )
                last = done
                if not renewed:
                    log.warning("job %s attempt %d: lease lost", self.job_id, self.attempt)
                    self.lost.set()
                    return
            except Exception:  # database away: keep trying; the lease may lapse meanwhile
                log.warning("job %s: lease renewal failed", self.job_id, exc_info=True)
