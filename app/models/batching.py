"""Dynamic micro-batching for predict: requests arriving within a few ms share one forward.

One batcher thread per loaded model gathers the images of concurrent requests (up to
`max_batch` images, waiting at most `max_wait_s` after the first), runs a single forward
pass and hands each request its rows. Requests wait on a future, not on a thread: the API
awaits it on its event loop, so waiting requests hold none of the thread pool that every
other route needs. The queue is bounded in images, which is its memory: when it is full a
request is refused at once (503) instead of piling up latency. A request takes its place
in the queue (`reserve`) before it reads and decodes its uploads, so the bound also covers
images being decoded, not only those decoded and waiting.
"""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.core.errors import Unavailable


class Closed(Exception):
    """The batcher was stopped (its model left the cache): run the forward without it."""


@dataclass
class _Request:
    images: np.ndarray  # float32 (n, 3, S, S), normalised
    done: Future[np.ndarray] = field(default_factory=Future)


class Reservation:
    """A request's place in a batcher's queue, for up to `n` images (`MicroBatcher.reserve`).

    Used as a context manager: leaving it without `submit` (an unreadable upload, a client
    gone) gives the place back.
    """

    def __init__(self, batcher: "MicroBatcher", n: int) -> None:
        self.batcher, self.n = batcher, n
        self._open = True

    def submit(self, images: np.ndarray) -> Future[np.ndarray]:
        """Queue `images` (at most `n`) in this place; raises `Closed` if the batcher was."""
        if not self._open:
            raise RuntimeError("this place was already used or released")
        if len(images) > self.n:
            raise ValueError(f"{len(images)} images in a place reserved for {self.n}")
        self._open = False
        return self.batcher._put(self, images)

    def release(self) -> None:
        if self._open:
            self._open = False
            self.batcher._release(self.n)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MicroBatcher:
    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
    ) -> None:
        self.forward: Callable[[np.ndarray], np.ndarray] | None = forward
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_s, queue_size
        # Unbounded underneath, the bound is counted here: `close` must never block, and the
        # stop signal must never wait for room behind the requests it follows.
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._state = threading.Lock()
        # Images in the queue, not yet taken into a batch: what the queue's memory is (a
        # request may send up to FINETUNE_MAX_PREDICT_FILES images, each 3·S² floats).
        self._waiting = 0
        self._closed = False
        self.batches = 0  # forward passes run, for tests and metrics
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: np.ndarray) -> Future[np.ndarray]:
        """Queue `images` for a shared forward; the future gets their probabilities.

        Cancelling the future withdraws a request that no batch has taken yet. Raises
        `Unavailable` when the queue is full, `Closed` once `close` was called.
        """
        return self.reserve(len(images)).submit(images)

    def reserve(self, n: int) -> "Reservation":
        """Room for `n` images, held until they are submitted or the place is released.

        Raises `Unavailable` when the queue is full, `Closed` once `close` was called.
        """
        with self._state:
            if self._closed:
                raise Closed
            # A request larger than the whole queue still runs when it finds the queue empty.
            if self._waiting and self._waiting + n > self.queue_size:
                raise Unavailable("prediction queue is full; retry shortly", code="overloaded")
            self._waiting += n
        return Reservation(self, n)

    def _put(self, place: "Reservation", images: np.ndarray) -> Future[np.ndarray]:
        request = _Request(images)
        with self._state:
            # The images now count for themselves; a place reserved for more gives the rest
            # back (the queue is emptied by what `_take` subtracts, image by image).
            self._waiting -= place.n - len(images)
            if self._closed:
                self._waiting -= len(images)
                raise Closed
            self._queue.put(request)
        return request.done

    def _release(self, n: int) -> None:
        with self._state:
            self._waiting -= n

    def close(self) -> None:
        """Stop once the requests already queued are answered; returns at once."""
        with self._state:
            if not self._closed:
                self._closed = True
                self._queue.put(None)

    def _take(self, item: _Request) -> _Request | None:
        """`item`, now leaving the queue; None if its caller withdrew it."""
        with self._state:
            self._waiting -= len(item.images)
        return item if item.done.set_running_or_notify_cancel() else None

    def _gather(self, first: _Request) -> tuple[list[_Request], _Request | None, bool]:
        """A batch starting with `first`; the request that did not fit, kept for the next
        batch; and whether the stop signal came."""
        batch, size = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                return batch, None, True
            if (request := self._take(item)) is None:
                continue
            if size + len(request.images) > self.max_batch:
                return batch, request, False
            batch.append(request)
            size += len(request.images)
        return batch, None, False

    def _answer(self, batch: list[_Request]) -> None:
        assert self.forward is not None
        try:
            probs = self.forward(np.concatenate([r.images for r in batch]))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].done.set_exception(exc)
                return
            probs = None
        if probs is None:
            # The shared pass failed (out of memory for the whole batch, one request's odd
            # input): each request is run alone, so that only one that fails alone fails.
            # Out of the handler: its traceback held the failed pass's tensors.
            for r in batch:
                self._answer([r])
            return
        self.batches += 1
        start = 0
        for r in batch:
            r.done.set_result(probs[start : start + len(r.images)])
            start += len(r.images)

    def _run(self) -> None:
        carried: _Request | None = None
        try:
            while True:
                if carried is None:
                    if (item := self._queue.get()) is None:
                        return
                    if (carried := self._take(item)) is None:
                        continue
                batch, carried, stop = self._gather(carried)
                self._answer(batch)
                if stop:
                    return
        finally:
            # `forward` is the loaded model's bound method, and the model holds this batcher:
            # a cycle that only a full garbage collection would free (rare in the API, whose
            # warm-up freezes its objects), keeping an evicted model's memory. Cut it here.
            self.forward = None
