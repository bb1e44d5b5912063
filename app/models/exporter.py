"""Exports the API makes on request: built on a thread of their own, awaited on the loop.

The `cpu` worker exports every new model (worker/exporting.py); a request that comes first
makes the export itself. A build is seconds to minutes of CPU, and one process builds one
at a time (app.core.exports). Requests waiting for a build used to hold a thread of the
pool every route needs: some forty of them, for a new model or a few, stalled the whole
API. Here builds run on this builder's one thread, every request for the same model and
format shares the build under way, and they wait for it on the event loop, holding no
thread and no database connection.
"""

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any

from app.core.db import get_sessionmaker
from app.core.errors import NotFound
from app.core.exports import ensure_export
from app.core.models import Model
from app.core.storage import Storage


class ExportBuilds:
    def __init__(self, database_url: str, storage: Storage) -> None:
        self.database_url, self.storage = database_url, storage
        self._builds: dict[tuple[str, str], Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def build(self, model_id: str, fmt: str) -> dict[str, Any]:
        """The export's record once built (and recorded), shared with concurrent requests."""
        key = (model_id, fmt)
        with self._lock:
            build = self._builds.get(key)
            if build is None:
                build = self._builds[key] = Future()
                # Running: a request that gives up (its client gone) cannot cancel the build
                # the others share; asyncio.wrap_future would try.
                build.set_running_or_notify_cancel()
                self._queue.put(key)
                if self._thread is None:
                    # A daemon: a build under way does not hold up the API's exit (what it
                    # staged is tidied at the next start).
                    self._thread = threading.Thread(target=self._serve, name="export", daemon=True)
                    self._thread.start()
        return await asyncio.wrap_future(build)

    def _serve(self) -> None:
        while True:
            key = self._queue.get()
            with self._lock:
                build = self._builds[key]
            self._run(key, build)

    def _run(self, key: tuple[str, str], build: Future[dict[str, Any]]) -> None:
        model_id, fmt = key
        try:
            with get_sessionmaker(self.database_url)() as session:
                model = session.get(Model, model_id)
                if model is None:  # deleted with its tenant meanwhile
                    raise NotFound(f"model {model_id} does not exist", code="model_not_found")
                record = ensure_export(session, model, self.storage, fmt)
        except BaseException as exc:
            build.set_exception(exc)
        else:
            build.set_result(record)
        finally:
            with self._lock:  # done: a later request reads the record, or tries again
                del self._builds[key]
