"""The Prometheus collector never fails a scrape on a half-imported torch."""

import sys
import types
from importlib.machinery import ModuleSpec

import pytest

from app.api.metrics import _gpu_memory


def test_the_gpu_gauge_waits_until_torch_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the API's start-up warm-up thread leaves in sys.modules while it imports torch.
    half = types.ModuleType("torch")
    half.__spec__ = ModuleSpec("torch", None)
    half.__spec__._initializing = True  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", half)
    assert list(_gpu_memory()) == []  # no AttributeError: the module has no `cuda` yet
