"""Shared pieces: the benchmark dataset on disk, timing, memory, tables."""

import json
import math
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from worker.training.heap import steady_heap
from worker.training.precision import CPU_BF16_MIN_SIZE, cpu_bf16_units, resolve_amp

T = TypeVar("T")


@dataclass
class ImageFolderData:
    root: Path  # ImageFolder layout: <root>/train/<class>/*.png, <root>/test/<class>/*.png
    classes: list[str]


def digits_imagefolder(
    root: Path, size: int, limit_per_class: int | None = None
) -> ImageFolderData:
    """scikit-learn's real digits as PNG files at `size`² (80 % train, 20 % test, per class)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16 * 255).astype(np.uint8)
    classes = [f"digit_{c}" for c in range(10)]
    for cls in range(10):
        idx = np.nonzero(data.target == cls)[0][:limit_per_class]
        cut = int(len(idx) * 0.8)
        for split, chosen in (("train", idx[:cut]), ("test", idx[cut:])):
            folder = root / split / classes[cls]
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                img = Image.fromarray(images[i], mode="L").resize(
                    (size, size), Image.Resampling.BICUBIC
                )
                img.convert("RGB").save(folder / f"{i}.png")
    return ImageFolderData(root, classes)


def _with_steady_heap(run: Callable[..., T], *args: Any) -> T:
    with steady_heap():
        return run(*args)


@contextmanager
def worker_process() -> Iterator[Callable[..., Any]]:
    """A process that runs calls as a worker's pool child runs jobs; yields `call(run, *args)`.

    The service's side of a comparison runs like a job: in its own long-lived process, with
    glibc keeping freed memory (worker.training.heap) while it trains. That setting is
    process-wide and sticky, so it must not reach the textbook loop, which runs in this
    process as users run it.
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda run, *args: pool.submit(_with_steady_heap, run, *args).result()


def fastest_alternated(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Each run's fastest seconds over `rounds` rounds that alternate their order.

    One untimed call each first (it selects kernels), then rounds in which every variant
    runs once, forwards and backwards in turn, so that a drift of the machine's speed during
    a comparison favours none of them. The minimum, not the mean: on a shared machine every
    disturbance only adds time.
    """
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, math.inf)
    for index in range(rounds):
        order = list(runs) if index % 2 == 0 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            runs[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls of one run (see fastest_alternated)."""
    return fastest_alternated({"run": run}, repeats)["run"]


def epoch_images(images: int, batch: int) -> int:
    """Images one epoch trains on: the trainer drops the last, partial batch."""
    return min(images, max(1, images // batch) * batch)


def step_seconds(history: list[dict[str, Any]], images: int, batch: int) -> float:
    """Seconds spent in training steps, from fit's per-epoch images/s."""
    return sum(epoch_images(images, batch) / epoch["images_per_second"] for epoch in history)


def _proc_stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children) from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by process `root` and all its descendants.

    Linux /proc accounting. A live process's time is in its own counters and moves to its
    parent's `cutime` when it is reaped, so each second is counted once.
    """
    stats = {int(pid): _proc_stat(pid) for pid in os.listdir("/proc") if pid.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        stat = stats.get(pid)
        if stat is not None:
            total += stat[1]
            todo += children.get(pid, [])
    return total


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its waited-for children, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def peak_cuda_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _cpu_autocast() -> str:
    dtype = resolve_amp("auto", torch.device("cpu"))
    return f"{dtype} from {CPU_BF16_MIN_SIZE} px" if dtype else "off (fp32)"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        # Same model name, different hosts: the instruction set decides the training rows
        # (bf16 autocast only where the CPU runs bf16 natively).
        "isa": torch.backends.cpu.get_cpu_capability(),
        "bf16 units": cpu_bf16_units() or "none",
        "cpu autocast": _cpu_autocast(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of `rows` (floats to 3 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
