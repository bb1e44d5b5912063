"""Prediction: a bounded LRU of loaded models, images decoded and batched per request.

torch is imported inside functions so the API process pays for it only when a model is
first used. Weights are read only from safetensors files this service wrote, after their
SHA-256 matched the stored one; nothing is unpickled. Uploads are decoded by
`worker.training.imaging.decode_image`, the very function training used (PIL + numpy only).
"""

import asyncio
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool
from PIL import Image, UnidentifiedImageError

from app.core.errors import Invalid, Unavailable, field_error
from app.core.storage import sha256_file
from app.models.batching import Closed, MicroBatcher, Reservation

# The deliberate exception to "app never imports worker": see that module's docstring.
from worker.training.imaging import decode_image


@dataclass
class LoadedModel:
    net: Any  # torch.nn.Module
    classes: list[str]
    image_size: int
    mean: np.ndarray
    std: np.ndarray
    device: str
    lock: threading.Lock
    amp: Any = None  # the autocast dtype, or None for float32
    batcher: MicroBatcher | None = None

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax rows for normalised float32 images (N, 3, S, S): one forward pass."""
        import torch

        batch = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        device_type = torch.device(self.device).type
        with (
            self.lock,
            torch.inference_mode(),
            torch.autocast(device_type, dtype=self.amp, enabled=self.amp is not None),
        ):
            return torch.softmax(self.net(batch).float(), dim=1).cpu().numpy()


def _load(path: Path, sha256: str, device: str, precision: str = "fp32") -> LoadedModel:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchvision import models

    from worker.training.precision import resolve_amp

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if sha256_file(path) != sha256:
        raise RuntimeError(f"weights file {path} does not match its recorded sha256")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    classes = json.loads(meta["classes"])
    net = models.get_model(meta["backbone"], weights=None, num_classes=len(classes))
    net.load_state_dict(load_file(str(path)), strict=True)
    net.eval().to(device, memory_format=torch.channels_last)
    image_size = int(meta["image_size"])
    return LoadedModel(
        net=net,
        classes=classes,
        image_size=image_size,
        mean=np.array(json.loads(meta["mean"]), dtype=np.float32).reshape(1, 3, 1, 1),
        std=np.array(json.loads(meta["std"]), dtype=np.float32).reshape(1, 3, 1, 1),
        device=device,
        lock=threading.Lock(),
        amp=resolve_amp("auto" if precision == "auto" else "off", torch.device(device), image_size),
    )


@dataclass(frozen=True)
class BatchPolicy:
    enabled: bool = True
    max_batch: int = 64
    max_wait_s: float = 0.005
    queue_size: int = 256


class ModelCache:
    """At most `size` models in memory; the least recently used is dropped first.

    A model is loaded outside the cache's lock (a download from remote storage, a hash and
    a load can take seconds): requests for loaded models never wait behind it, and
    concurrent first requests for one model share its single load. In the API the others
    wait for it on the event loop (`load`), holding no thread of the pool every route
    needs; the wait is as long as the load, which remote storage bounds (app.core.objectstore).
    An evicted model stays usable by the requests holding it, and is freed when they finish.
    """

    def __init__(
        self,
        size: int,
        device: str = "auto",
        batching: BatchPolicy | None = None,
        precision: str = "fp32",
    ) -> None:
        self.size, self.device, self.precision = size, device, precision
        self.batching = batching or BatchPolicy()
        self._models: OrderedDict[str, Future[LoadedModel]] = OrderedDict()
        self._lock = threading.Lock()
        # At most `size` models being fetched and loaded at once: one request each for many
        # models not yet loaded would otherwise put them all on the device together.
        self._loading = threading.BoundedSemaphore(size)
        self.loads = 0

    def get(self, model_id: str, fetch: Callable[[], Path], sha256: str) -> LoadedModel:
        """The loaded model; `fetch` gives its file (a download from remote storage) on a miss.

        Blocks the calling thread while the model loads; `load` is the event loop's form.
        """
        entry, mine = self._claim(model_id)
        if mine:
            self._fill(model_id, entry, fetch, sha256)
        return entry.result()

    async def load(self, model_id: str, fetch: Callable[[], Path], sha256: str) -> LoadedModel:
        """`get` for a coroutine: the load runs in a thread, waiting takes none.

        The load is handed to the loop's executor at once, not awaited: a claimed entry must
        be filled even when the request that claimed it is cancelled (its client gone)
        before a thread took the work, or every later request would wait on it forever.
        """
        entry, mine = self._claim(model_id)
        if mine:
            asyncio.get_running_loop().run_in_executor(
                None, self._fill, model_id, entry, fetch, sha256
            )
        return await asyncio.wrap_future(entry)

    def _claim(self, model_id: str) -> tuple[Future[LoadedModel], bool]:
        """The model's entry, and whether the caller is the one to load it."""
        with self._lock:
            entry = self._models.get(model_id)
            if entry is not None:
                self._models.move_to_end(model_id)
                return entry, False
            entry = self._models[model_id] = Future()
            # Running: a waiter that gives up (a client gone, its task cancelled) cannot
            # cancel the load every other waiter shares; asyncio.wrap_future would try.
            entry.set_running_or_notify_cancel()
            return entry, True

    def _fill(
        self, model_id: str, entry: Future[LoadedModel], fetch: Callable[[], Path], sha256: str
    ) -> None:
        try:
            with self._loading:
                loaded = self._load(fetch(), sha256)
        except BaseException as exc:
            with self._lock:  # the next request tries again
                if self._models.get(model_id) is entry:
                    del self._models[model_id]
            entry.set_exception(exc)
            return
        entry.set_result(loaded)
        for evicted in self._evict(keep=model_id):
            if evicted.batcher is not None:
                evicted.batcher.close()

    def _load(self, path: Path, sha256: str) -> LoadedModel:
        loaded = _load(path, sha256, self.device, self.precision)
        policy = self.batching
        # Without batching, a forward per request, still through the batcher's thread and
        # bounded queue: waiting requests then hold no thread of the pool either.
        batch, wait = (policy.max_batch, policy.max_wait_s) if policy.enabled else (1, 0.0)
        loaded.batcher = MicroBatcher(loaded.probabilities, batch, wait, policy.queue_size)
        with self._lock:
            self.loads += 1
        return loaded

    def _evict(self, keep: str) -> list[LoadedModel]:
        """Drop the least recently used loaded models beyond `size`, never one loading nor
        `keep`, the one just loaded: when more models load at once than the cache holds, it
        stays over `size` until the last of those loads ends.
        """
        evicted = []
        with self._lock:
            for model_id, entry in list(self._models.items()):
                if len(self._models) <= self.size:
                    break
                if model_id != keep and entry.done() and entry.exception() is None:
                    del self._models[model_id]
                    evicted.append(entry.result())
        return evicted


def decode(data: bytes, filename: str, size: int, max_pixels: int | None = None) -> np.ndarray:
    """One upload as uint8 (3, size, size), exactly as training decoded it; 422 if unreadable.

    Images over `max_pixels` (default: Pillow's MAX_IMAGE_PIXELS) are refused unread.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        return decode_image(io.BytesIO(data), size, max_pixels=limit)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        reason = f"image has more than the {limit} pixels allowed"
    except UnidentifiedImageError:
        reason = "not a readable JPEG, PNG, BMP, GIF, WebP or TIFF image"
    # Hostile bytes fail inside decoders with many exception types (OSError, SyntaxError,
    # struct.error, IndexError…); each one means the same thing to the caller.
    except Exception as exc:
        reason = f"not a readable image ({type(exc).__name__})"
    raise Invalid(
        f"{filename} is not a readable image",
        code="image_invalid",
        errors=[field_error("files", reason, file=filename)],
    )


PREDICT_TIMEOUT_S = 60.0  # a request's longest wait for its forward pass, then 503


def normalise(model: LoadedModel, images: list[np.ndarray]) -> np.ndarray:
    """Decoded uint8 images (3, S, S) as the float32 batch the network takes."""
    x = np.stack(images).astype(np.float32) / 255.0
    return (x - model.mean) / model.std


def reserve(model: LoadedModel, n: int) -> Reservation | None:
    """A place for `n` images in the model's queue, taken before they are read and decoded
    (503 `overloaded` when it is full); None for a model evicted since the request got it.
    """
    if model.batcher is None:
        return None
    try:
        return model.batcher.reserve(n)
    except Closed:
        return None


async def probabilities(
    model: LoadedModel,
    x: np.ndarray,
    place: Reservation | None = None,
    timeout: float = PREDICT_TIMEOUT_S,
) -> np.ndarray:
    """Softmax rows for `x`, sharing a forward pass with concurrent requests.

    `x` goes into `place`, the request's reserved place in the queue (one is taken now if
    none is given). Awaited on the event loop: a request waiting for its batch holds no
    thread of the pool (40 by default) that every other route needs, so the batcher's
    bounded queue, not the pool, is what limits waiting predictions. A model evicted since
    the request got it no longer batches; the request runs its own forward on it.
    """
    if place is None:
        place = reserve(model, len(x))
    if place is not None:
        try:
            done = place.submit(x)
        except Closed:
            pass
        else:
            try:
                return await asyncio.wait_for(asyncio.wrap_future(done), timeout)
            except TimeoutError:  # the wait is cancelled: a batch not yet formed skips it
                raise Unavailable(
                    f"no forward pass within {timeout:g} s; retry shortly", code="overloaded"
                ) from None
    return await run_in_threadpool(model.probabilities, x)


def rank(model: LoadedModel, probs: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) per row, k capped at the class count."""
    k = min(top_k, len(model.classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [(model.classes[i], float(row[i])) for i in idx]
        for row, idx in zip(probs, order, strict=True)
    ]
