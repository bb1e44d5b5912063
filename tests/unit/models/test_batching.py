"""Micro-batching: concurrent requests share forward passes and each gets its own rows."""

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.core.errors import Unavailable
from app.models.batching import Closed, MicroBatcher


def _forward(calls: list[int], pause: float = 0.02):  # type: ignore[no-untyped-def]
    def forward(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(pause)  # a forward pass takes time; requests arrive meanwhile
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)

    return forward


def _images(n: int, value: float = 0.0) -> np.ndarray:
    return np.full((n, 3, 2, 2), value, dtype=np.float32)


def _held(max_batch: int, queue_size: int) -> tuple[MicroBatcher, threading.Event, list[int]]:
    """A batcher whose forward passes wait for the gate it returns, and the sizes they ran."""
    gate = threading.Event()
    calls: list[int] = []
    batcher = MicroBatcher(
        lambda x: gate.wait(5) and _forward(calls, 0)(x),
        max_batch,
        max_wait_s=0.0,
        queue_size=queue_size,
    )
    return batcher, gate, calls


def test_concurrent_requests_share_forward_passes() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_forward(calls), max_batch=64, max_wait_s=0.01, queue_size=100)
    inputs = [_images(1 + i % 3, float(i)) for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: batcher.submit(x).result(5), inputs))
    for x, out in zip(inputs, results, strict=True):
        assert out.shape == (len(x), 1) and np.allclose(out, x[0].sum())
    assert sum(calls) == sum(len(x) for x in inputs)
    assert len(calls) < len(inputs) / 2, calls
    batcher.close()


def test_a_batch_never_exceeds_max_batch() -> None:
    """A request that does not fit waits for the next batch instead of growing this one."""
    batcher, gate, calls = _held(4, queue_size=10)
    first = batcher.submit(_images(1))  # a batch of its own; its forward waits for the gate
    time.sleep(0.05)
    waiting = [batcher.submit(_images(3, float(i))) for i in range(3)]
    gate.set()
    assert first.result(5).shape == (1, 1)
    assert [w.result(5)[0, 0] for w in waiting] == [0.0, 12.0, 24.0]
    assert calls == [1, 3, 3, 3], calls


def test_a_failed_forward_reaches_every_waiting_request() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    batcher = MicroBatcher(broken, max_batch=8, max_wait_s=0.0, queue_size=4)
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.submit(_images(1)).result(5)
    batcher.close()


def test_a_shared_forward_that_fails_is_retried_per_request() -> None:
    """Out of memory for the batch of all, say: the requests that fit alone are answered,
    and only the one that fails alone learns of it. (Every request of the batch failed.)"""
    calls: list[int] = []
    gate = threading.Event()

    def limited(x: np.ndarray) -> np.ndarray:
        assert gate.wait(5)
        if len(x) > 4:
            raise RuntimeError("out of memory")
        return _forward(calls, 0)(x)

    batcher = MicroBatcher(limited, max_batch=16, max_wait_s=0.0, queue_size=16)
    first = batcher.submit(_images(1))  # alone: its forward waits for the gate
    time.sleep(0.05)
    small = [batcher.submit(_images(2, float(i))) for i in range(3)]
    big = batcher.submit(_images(5))
    gate.set()
    assert first.result(5).shape == (1, 1)
    assert [f.result(5)[0, 0] for f in small] == [0.0, 12.0, 24.0]
    with pytest.raises(RuntimeError, match="out of memory"):
        big.result(5)
    assert calls == [1, 2, 2, 2], calls
    batcher.close()


def test_a_full_queue_refuses_at_once_and_a_withdrawn_request_is_skipped() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return _forward(calls, 0)(x)

    batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0.0, queue_size=2)
    first = batcher.submit(_images(1))  # taken by the batcher thread, blocked in forward
    time.sleep(0.05)
    withdrawn, second = batcher.submit(_images(1, 5.0)), batcher.submit(_images(1))
    with pytest.raises(Unavailable):
        batcher.submit(_images(1))
    assert withdrawn.cancel()  # e.g. its request timed out
    gate.set()
    assert first.result(5).shape == (1, 1) and second.result(5).shape == (1, 1)
    assert calls == [1, 1]  # the withdrawn request never reached the model
    batcher.close()


def test_the_queue_is_bounded_in_images_not_requests() -> None:
    """Its memory is its images: 256 requests of 64 images each queued 16384 of them (10 GB
    of float32 at 224 px) under a bound meant as 256. A request larger than the bound still
    runs when it finds the queue empty."""
    batcher, gate, _ = _held(64, queue_size=4)
    first = batcher.submit(_images(1))  # taken at once; its forward waits for the gate
    time.sleep(0.05)
    three = batcher.submit(_images(3))
    with pytest.raises(Unavailable):
        batcher.submit(_images(2))
    one = batcher.submit(_images(1))
    gate.set()
    assert [len(f.result(5)) for f in (first, three, one)] == [1, 3, 1]
    assert len(batcher.submit(_images(10)).result(5)) == 10
    batcher.close()


def test_close_answers_what_is_queued_then_lets_the_model_go() -> None:
    """Closing never blocks, queued requests are still answered, later ones are told
    `Closed`, and the model the forward belongs to is freed without a garbage collection."""

    class Net:
        def forward(self, x: np.ndarray) -> np.ndarray:
            time.sleep(0.05)
            return x.reshape(len(x), -1)[:, :1]

    net = Net()
    batcher = MicroBatcher(net.forward, max_batch=1, max_wait_s=0.0, queue_size=1)
    net.batcher = batcher  # type: ignore[attr-defined]  # the cycle a loaded model makes
    first = batcher.submit(_images(1))
    time.sleep(0.01)
    queued = batcher.submit(_images(1))
    batcher.close()  # the queue is full: this must not wait for room
    with pytest.raises(Closed):
        batcher.submit(_images(1))
    assert first.result(5).shape == (1, 1) and queued.result(5).shape == (1, 1)
    batcher._thread.join(5)
    alive = weakref.ref(net)
    gc.disable()
    try:
        del net
        assert alive() is None
    finally:
        gc.enable()


def test_a_reserved_place_counts_until_it_is_used_or_released() -> None:
    """A request takes its place before decoding its uploads: the places held count against
    the bound as queued images do, and come back when unused or partly used."""
    batcher, gate, _ = _held(64, queue_size=4)
    first = batcher.submit(_images(1))  # taken at once; its forward waits for the gate
    time.sleep(0.05)
    with batcher.reserve(3) as decoding, pytest.raises(Unavailable):
        batcher.reserve(2)
    # Left without submitting (an unreadable upload, say): the place is free again.
    with batcher.reserve(4) as place:
        later = place.submit(_images(2))  # two of its four images were refused
        with pytest.raises(RuntimeError):
            place.submit(_images(2))
    with batcher.reserve(1) as small, pytest.raises(ValueError):
        small.submit(_images(2))
    two = batcher.submit(_images(2))  # 2 queued + 2 = the bound; nothing else held
    with pytest.raises(Unavailable):
        batcher.reserve(1)
    gate.set()
    assert [len(f.result(5)) for f in (first, later, two)] == [1, 2, 2]
    assert decoding.n == 3
    assert batcher._waiting == 0
    held = batcher.reserve(1)
    batcher.close()
    with pytest.raises(Closed):
        held.submit(_images(1))
    assert batcher._waiting == 0
