"""The embedded broker: kombu's filesystem transport, with message files that appear whole.

kombu's `_put` creates a message file in the very folder consumers list and only then
writes it. A consumer polling in between moves the empty (or half-written) file away,
fails to decode it, and Celery stops the whole worker ("Unrecoverable error:
JSONDecodeError", kombu issue #1551): seen here when the API enqueued a job while the
worker polled. Here a message is written under a name consumers ignore and renamed into
place, so a consumer only ever sees complete messages. Every process of the service
(API producer, workers) selects this class through Celery's `broker_transport`.

It also stops polling as soon as its worker is told to stop (see `Transport.drain_events`).
"""

import os
import uuid
from contextlib import suppress
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "app.core.filebroker:Transport"


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

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's, one polling interval at a time, leaving at once when the worker is
        told to stop.

        Celery's loop for polling transports drains in 2 s cycles and, after a warm
        shutdown is asked, runs one more before it stops (`synloop`'s `finally`): up to
        4 s of idle polling added to every embedded worker's shutdown (Ctrl-C of
        `finetune up`, each test that stops one)."""
        from celery.worker import state  # set only in a worker that is stopping

        step = self.polling_interval or 1.0
        end = None if timeout is None else monotonic() + timeout
        while not (_asked(state.should_stop) or _asked(state.should_terminate)):
            left = step if end is None else max(0.0, end - monotonic())
            with suppress(TimeoutError):  # socket.timeout: this slice found no message
                return super().drain_events(connection, min(left, step))
            if end is not None and monotonic() >= end:
                break
        raise TimeoutError()


def _asked(flag: object) -> bool:
    """Celery's reading of a stop flag: set unless None or False (its value, an exit code,
    may be 0)."""
    return flag is not None and flag is not False
