"""Worker process lifecycle: heartbeat + reaper thread, fork hygiene, graceful shutdown."""

import logging
import os
import signal
import socket
import threading
from typing import Any

from billiard.process import current_process
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from celery.worker import state
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite

from app.core.config import get_settings
from app.core.db import forget_inherited_connections, get_sessionmaker
from app.core.models import Worker, utcnow
from app.core.queue import TRAIN_TASK
from app.core.reaper import reap
from app.core.storage import forget_deleted_datasets, tidy_host
from worker.training.trainer import use_gpu_slot

log = logging.getLogger(__name__)


class Beacon:
    """In the worker's main process: report liveness and run the reaper every interval, and
    drop this host's cached copies of datasets deleted since (a user's deleted data must
    not wait for the cache to need the space).

    It first tidies the host's scratch space (app.core.storage.tidy_host), off Celery's
    start-up path: sizing a cache of large datasets walks their files.
    """

    def __init__(self, queues: str) -> None:
        self.settings = get_settings()
        self.queues = queues
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beacon", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with get_sessionmaker(self.settings.database_url)() as session:
            session.execute(delete(Worker).where(Worker.id == self.id))
            session.commit()

    def beat(self) -> None:
        with get_sessionmaker(self.settings.database_url)() as session:
            dialect = session.get_bind().dialect.name
            insert = (postgresql if dialect == "postgresql" else sqlite).insert
            stmt = insert(Worker).values(id=self.id, queues=self.queues, last_seen_at=utcnow())
            session.execute(
                stmt.on_conflict_do_update(index_elements=["id"], set_={"last_seen_at": utcnow()})
            )
            session.commit()
            reap(session, self.settings)
            if dropped := forget_deleted_datasets(session, self.settings):
                log.info("dropped cached copies of deleted datasets: %s", dropped)

    def _run(self) -> None:
        tidy_host(self.settings)  # never raises
        while True:
            try:
                self.beat()
            except Exception:  # database or broker away: try again next round
                log.warning("worker heartbeat/reaper round failed", exc_info=True)
            if self._stop.wait(self.settings.reaper_interval_s):
                return


_beacon: Beacon | None = None
_stopping = False


@worker_process_init.connect
def _child_started(**_: object) -> None:
    forget_inherited_connections()
    os.nice(get_settings().worker_nice)
    # The pool's index of this child (0..concurrency-1; a replacement child takes over the
    # index of the one it replaces): with device `auto`, child k trains on GPU k.
    use_gpu_slot(getattr(current_process(), "index", 0) or 0)


@worker_ready.connect
def _ready(sender: Any, **_: object) -> None:
    global _beacon
    _beacon = Beacon(",".join(sorted(sender.app.amqp.queues.consume_from)))
    _beacon.start()


def training_children() -> list[int]:
    """Pids of the pool children running a training task now (accepted by the pool)."""
    return [
        request.worker_pid
        for request in list(state.active_requests)
        if request.name == TRAIN_TASK and request.worker_pid
    ]


@worker_shutting_down.connect
def _shutting_down(**_: object) -> None:
    """Forward the shutdown to training children so they checkpoint-release, not run on.

    Only to those: an idle pool child has SIGTERM's default action and can die holding
    the lock of the pool's task pipe, and billiard's warm shutdown then waits on that lock
    forever (seen under load: the worker outlived `up` with a zombie child). Idle children
    and running exports end by the pool's own warm shutdown instead.

    Runs inside Celery's SIGTERM handler, so a second SIGTERM can re-enter it while the
    first is still inside a lock (the beacon's Event): only the first call does anything.
    """
    global _stopping
    if _stopping:
        return
    _stopping = True
    for pid in training_children():
        log.warning("shutdown: asking training child %d to checkpoint and release", pid)
        os.kill(pid, signal.SIGTERM)
    if _beacon is not None:
        try:
            _beacon.stop()
        except Exception:
            log.warning("could not remove the worker row", exc_info=True)
