"""Dynamic micro-batching for predict: requests arriving within a few ms share one forward.

One batcher thread per loaded model gathers the images of concurrent requests (up to
`max_batch` images, waiting at most `max_wait_s` after the first), runs a single forward
pass and hands each request its rows. The queue is bounded: when it is full the request is
refused at once (503) instead of piling up latency.
"""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.core.errors import Unavailable


@dataclass
class _Request:
    images: np.ndarray  # float32 (n, 3, S, S), normalised
    done: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcher:
    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
    ) -> None:
        self.forward, self.max_batch, self.max_wait_s = forward, max_batch, max_wait_s
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()
        self.batches = 0  # forward passes run, for tests and metrics

    def submit(self, images: np.ndarray, timeout: float = 60) -> np.ndarray:
        """Probabilities for `images`, computed in a shared batch; blocks the calling thread."""
        request = _Request(images)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise Unavailable(
                "prediction queue is full; retry shortly", code="overloaded"
            ) from None
        return request.done.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)

    def _gather(self, first: _Request) -> list[_Request]:
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
                self._queue.put(None)  # keep the stop signal for the main loop
                break
            batch.append(item)
            size += len(item.images)
        return batch

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._gather(first)
            try:
                probs = self.forward(np.concatenate([r.images for r in batch]))
            except Exception as exc:  # every waiting request learns of the failure
                for r in batch:
                    r.done.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for r in batch:
                r.done.set_result(probs[start : start + len(r.images)])
                start += len(r.images)
