"""Which device `auto` trains on: with several GPUs, pool child k takes GPU k (mod count).

The GPUs are faked: this machine has none, and the mapping is what is tested."""

from types import SimpleNamespace

import pytest
import torch

from worker import lifecycle
from worker.training import trainer
from worker.training.trainer import resolve_device, use_gpu_slot


@pytest.fixture(autouse=True)
def _slot_restored() -> object:
    yield
    use_gpu_slot(0)


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> list[torch.device]:
    """Fake `count` GPUs; the list collects the devices made current."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_auto_spreads_pool_children_over_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    current = _gpus(monkeypatch, 4)
    seen = []
    for slot in range(6):
        use_gpu_slot(slot)
        seen.append(resolve_device("auto"))
    assert seen == [torch.device("cuda", i) for i in (0, 1, 2, 3, 0, 1)]
    assert current == seen  # made current before any data is placed on it


def test_auto_without_a_gpu_is_the_cpu_and_a_named_device_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _gpus(monkeypatch, 0)
    use_gpu_slot(3)
    assert resolve_device("auto") == torch.device("cpu")
    _gpus(monkeypatch, 4)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_pool_child_takes_its_pool_index_as_its_gpu_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `finetune worker --concurrency N` runs in each child as it starts."""
    monkeypatch.setattr(lifecycle, "current_process", lambda: SimpleNamespace(index=2))
    monkeypatch.setattr(lifecycle, "forget_inherited_connections", lambda: None)
    monkeypatch.setattr(lifecycle.os, "nice", lambda _: 0)  # not this test process's priority
    lifecycle._child_started()
    assert trainer._gpu_slot == 2
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
