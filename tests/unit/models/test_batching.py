"""Micro-batching: concurrent requests share forward passes and each gets its own rows."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.core.errors import Unavailable
from app.models.batching import MicroBatcher


def _forward(calls: list[int]):  # type: ignore[no-untyped-def]
    def forward(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(0.02)  # a forward pass takes time; requests arrive meanwhile
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)

    return forward


def test_concurrent_requests_share_forward_passes() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_forward(calls), max_batch=64, max_wait_s=0.01, queue_size=100)
    inputs = [np.full((1 + i % 3, 3, 2, 2), float(i), dtype=np.float32) for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher.submit, inputs))
    for x, out in zip(inputs, results, strict=True):
        assert out.shape == (len(x), 1) and np.allclose(out, x[0].sum())
    assert sum(calls) == sum(len(x) for x in inputs)
    assert len(calls) < len(inputs) / 2, calls
    assert max(calls) <= 64
    batcher.close()


def test_a_failed_forward_reaches_every_waiting_request() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    batcher = MicroBatcher(broken, max_batch=8, max_wait_s=0.0, queue_size=4)
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.submit(np.zeros((1, 3, 2, 2), np.float32))
    batcher.close()


def test_a_full_queue_refuses_at_once() -> None:
    gate = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return x.reshape(len(x), -1)[:, :1]

    batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0.0, queue_size=1)
    x = np.zeros((1, 3, 2, 2), np.float32)
    pool = ThreadPoolExecutor(2)
    first = pool.submit(batcher.submit, x)  # taken by the batcher thread, blocked in forward
    time.sleep(0.05)
    second = pool.submit(batcher.submit, x)  # waits in the queue (size 1)
    time.sleep(0.05)
    with pytest.raises(Unavailable):
        batcher.submit(x)
    gate.set()
    assert first.result(5).shape == (1, 1) and second.result(5).shape == (1, 1)
    batcher.close()
    pool.shutdown()
