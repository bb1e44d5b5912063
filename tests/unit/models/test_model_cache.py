"""The model cache: loads outside its lock, once per model, and evicts without stranding
the requests that still hold an evicted model."""

import asyncio
import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from torchvision import models

from app.core.storage import sha256_file
from app.models import inference
from app.models.inference import BatchPolicy, ModelCache
from worker.training.checkpoint import save_weights, weights_metadata
from worker.training.spec import TrainSpec

SIZE = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("w")
    out = {}
    for name in ("a", "b", "c"):
        net = models.get_model("resnet18", weights=None, num_classes=2)
        spec = TrainSpec(backbone="resnet18", classes=("x", "y"), image_size=SIZE)
        path = folder / f"{name}.safetensors"
        save_weights(path, net.state_dict(), weights_metadata(spec, job_id="job_x", epoch=1))
        out[name] = (path, sha256_file(path))
    return out


def _get(  # type: ignore[no-untyped-def]
    cache: ModelCache,
    files: dict,
    name: str,
    gate: threading.Event | None = None,
    started: threading.Event | None = None,
):
    path, sha = files[name]

    def fetch() -> Path:
        if started is not None:
            started.set()
        if gate is not None:
            assert gate.wait(10)
        return path

    return cache.get(name, fetch, sha)


def _batch(n: int = 1) -> np.ndarray:
    return np.zeros((n, 3, SIZE, SIZE), np.float32)


def test_an_evicted_model_still_answers_the_request_holding_it(files: dict) -> None:
    """Request 1 got model a; request 2 loaded b meanwhile and a left the cache (size 1)."""
    cache = ModelCache(1, "cpu", BatchPolicy(max_wait_s=0.0))
    held = _get(cache, files, "a")
    _get(cache, files, "b")
    assert held.batcher is not None
    held.batcher._thread.join(5)  # stopped: nothing reads its queue any more
    probs = asyncio.run(asyncio.wait_for(inference.probabilities(held, _batch(2)), 10))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_an_evicted_model_is_freed_without_a_garbage_collection(files: dict) -> None:
    cache = ModelCache(1, "cpu", BatchPolicy(max_wait_s=0.0))
    net = weakref.ref(_get(cache, files, "a").net)
    _get(cache, files, "b")
    gc.collect()  # what came before this test
    gc.disable()  # as good as the API after its warm-up froze the heap
    try:
        for _ in range(50):
            if net() is None:
                break
            threading.Event().wait(0.1)  # the batcher thread lets go when it ends
        assert net() is None
    finally:
        gc.enable()


def test_a_slow_load_blocks_neither_other_models_nor_a_second_load(files: dict) -> None:
    cache = ModelCache(2, "cpu", BatchPolicy(enabled=False))
    loaded_a = _get(cache, files, "a")
    gate, started = threading.Event(), threading.Event()
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(_get, cache, files, "b", gate, started) for _ in range(2)]
        assert started.wait(10)  # b's download hangs now
        assert _get(cache, files, "a") is loaded_a
        gate.set()
        first, second = (f.result(10) for f in slow)
    assert first is second and cache.loads == 2  # b loaded once for both requests


def test_a_failed_load_is_tried_again(files: dict) -> None:
    cache = ModelCache(1, "cpu", BatchPolicy(enabled=False))
    path, _ = files["a"]
    with pytest.raises(RuntimeError, match="sha256"):
        cache.get("a", lambda: path, "0" * 64)
    assert cache.get("a", lambda: path, files["a"][1]).classes == ["x", "y"]


def test_the_model_just_loaded_is_not_evicted(files: dict) -> None:
    """Two models asked for at once in a cache of one: the first to finish stays until the
    second is in (it used to be evicted at once, and every request reloaded it)."""
    cache = ModelCache(1, "cpu", BatchPolicy(max_wait_s=0.0))
    gate_a, gate_b = threading.Event(), threading.Event()
    started_a, started_b = threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(_get, cache, files, "a", gate_a, started_a)
        assert started_a.wait(10)
        b = pool.submit(_get, cache, files, "b", gate_b, started_b)
        for _ in range(100):  # b is claimed, waiting for a's load to end before its own
            if "b" in cache._models:
                break
            threading.Event().wait(0.01)
        gate_a.set()
        loaded_a = a.result(10)
        assert _get(cache, files, "a") is loaded_a and cache.loads == 1
        assert started_b.wait(10)
        gate_b.set()
        b.result(10)
    assert loaded_a.batcher is not None
    loaded_a.batcher._thread.join(5)  # closed: a was evicted once b was in
    assert not loaded_a.batcher._thread.is_alive()
    assert _get(cache, files, "b") is b.result() and cache.loads == 2


def test_a_waiter_that_gives_up_leaves_the_shared_load_to_the_others(files: dict) -> None:
    cache = ModelCache(1, "cpu", BatchPolicy(enabled=False))
    gate, started = threading.Event(), threading.Event()

    async def scenario() -> inference.LoadedModel:
        path, sha = files["a"]

        def fetch() -> Path:
            started.set()
            assert gate.wait(10)
            return path

        loader = asyncio.create_task(cache.load("a", fetch, sha))
        quitter = asyncio.create_task(cache.load("a", fetch, sha))
        stayer = asyncio.create_task(cache.load("a", fetch, sha))
        while not started.is_set():
            await asyncio.sleep(0.01)
        quitter.cancel()  # its client went away
        await asyncio.sleep(0.05)
        gate.set()
        first, third = await asyncio.wait_for(asyncio.gather(loader, stayer), 10)
        assert first is third and quitter.cancelled()
        return first

    assert asyncio.run(scenario()).classes == ["x", "y"] and cache.loads == 1


def test_a_loader_cancelled_before_its_thread_ran_still_fills_the_entry(files: dict) -> None:
    """The request that claimed a load went away at once: the entry it claimed used to stay
    unfilled, and every later request for the model waited on it forever."""
    cache = ModelCache(1, "cpu", BatchPolicy(enabled=False))
    path, sha = files["a"]

    async def scenario() -> inference.LoadedModel:
        loader = asyncio.create_task(cache.load("a", lambda: path, sha))
        await asyncio.sleep(0)  # it claimed the entry and reached its first suspension
        loader.cancel()
        return await asyncio.wait_for(cache.load("a", lambda: path, sha), 10)

    assert asyncio.run(scenario()).classes == ["x", "y"] and cache.loads == 1


def test_no_more_models_load_at_once_than_the_cache_holds(files: dict) -> None:
    # One request each for 20 new models loaded all 20 onto the device together.
    cache = ModelCache(1, "cpu", BatchPolicy(enabled=False))
    gate, started_a, started_b = threading.Event(), threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(_get, cache, files, "a", gate, started_a)
        assert started_a.wait(10)
        b = pool.submit(_get, cache, files, "b", None, started_b)
        assert not started_b.wait(0.5), "a second model loaded beside the first"
        gate.set()
        assert a.result(10).classes == b.result(10).classes == ["x", "y"]
