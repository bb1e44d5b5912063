"""The embedded broker: kombu's filesystem transport, with message files that appear whole.

kombu's `_put` creates a message file in the very folder consumers list and only then
writes it. A consumer polling in between moves the empty (or half-written) file away,
fails to decode it, and Celery stops the whole worker ("Unrecoverable error:
JSONDecodeError", kombu issue #1551): seen here when the API enqueued a job while the
worker polled. Here a message is written under a name consumers ignore and renamed into
place, so a consumer only ever sees complete messages. Every process of the service
(API producer, workers) selects this class through Celery's `broker_transport`.

Consumers wake the moment a message is renamed into the folder (inotify, on Linux) instead
of at their next poll, and stop polling as soon as their worker is told to stop (see
`Transport.drain_events`).
"""

import logging
import math
import os
import uuid
from contextlib import suppress
from queue import Empty
from time import monotonic, sleep
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "app.core.filebroker:Transport"

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put `payload` onto `queue`: written aside, then renamed into the folder."""
        # kombu's naming: consumers take `<time>_<uuid>.<queue>.msg` files in name order.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: for consumers (and queue.pending_job_ids) it is no queue's message.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)  # atomic within one folder
        except OSError as exc:
            with suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    _arrivals: Any = None  # the inotify watch on the channels' folders; False: none to be had

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver one message, waiting up to `timeout`: kombu's loop, with two changes.

        Between polls it waits for a file to be renamed into a folder it consumes from
        (inotify) instead of sleeping, so a job submitted to an idle worker starts within
        milliseconds rather than half a polling interval later on average; the polling
        interval stays as the fallback where inotify is missing (not Linux, the watch limit
        reached). And it leaves at once when the worker is told to stop: Celery's loop for
        polling transports drains in 2 s cycles and, after a warm shutdown is asked, runs
        one more before it stops (`synloop`'s `finally`), up to 4 s of idle polling added to
        every embedded worker's shutdown (Ctrl-C of `finetune up`, each test that stops
        one). The stop flags are read between waits, so a wait lasts one interval at most.
        """
        from celery.worker import state  # set only in a worker that is stopping

        step = self.polling_interval or 1.0
        end = None if timeout is None else monotonic() + timeout
        arrivals = self._watch()
        while not (_asked(state.should_stop) or _asked(state.should_terminate)):
            if arrivals:
                arrivals.read(timeout=0)  # what happened before the listing below is in it
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = step if end is None else min(step, end - monotonic())
            if wait <= 0:
                break
            if arrivals:
                arrivals.read(timeout=math.ceil(wait * 1000))  # any rename since wakes it
            else:
                sleep(wait)
        raise TimeoutError()

    def _watch(self) -> Any:
        """An inotify instance watching the folders messages are renamed into, made once;
        None where inotify is not to be had."""
        if self._arrivals is None:
            self._arrivals = False
            try:
                from inotify_simple import INotify, flags

                arrivals = INotify()
            except (ImportError, AttributeError, OSError) as exc:  # no inotify on this OS
                log.debug("embedded broker: polling only (%s)", exc)
                return None
            try:
                for folder in {channel.data_folder_in for channel in self.channels}:
                    arrivals.add_watch(folder, flags.MOVED_TO)
            except OSError as exc:  # fs.inotify.max_user_watches reached
                arrivals.close()
                log.warning("embedded broker: polling every %ss (%s)", self.polling_interval, exc)
                return None
            self._arrivals = arrivals
        return self._arrivals or None

    def close_connection(self, connection: Any) -> None:
        if self._arrivals:
            self._arrivals.close()
        self._arrivals = None
        super().close_connection(connection)


def _asked(flag: object) -> bool:
    """Celery's reading of a stop flag: set unless None or False (its value, an exit code,
    may be 0)."""
    return flag is not None and flag is not False
