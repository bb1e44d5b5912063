"""The import rules of STYLE.md: the API never loads torch or the worker at import time."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


# The modules the API shares with the training core: train and serve must decode images
# identically (imaging: Pillow + numpy only, no torch) and agree on the hardware's native
# precision (precision: imported only when predict loads a model, never at start).
SHARED = {"worker", "worker.training", "worker.training.imaging", "worker.training.precision"}


def test_api_starts_without_torch_or_worker() -> None:
    loaded = _imports_after("app.main")
    assert "torch" not in loaded and "torchvision" not in loaded
    assert not {m for m in loaded if m == "worker" or m.startswith("worker.")} - SHARED
    assert "worker.training.precision" not in loaded


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("app.datasets.archive", {"torch", "fastapi", "sqlalchemy"}),
        ("worker.training.imaging", {"torch", "torchvision", "celery", "sqlalchemy"}),
    ],
)
def test_pure_modules_stay_light(module: str, forbidden: set[str]) -> None:
    assert not _imports_after(module) & forbidden


def test_training_core_knows_nothing_of_celery_sql_http_or_settings() -> None:
    for path in (ROOT / "worker" / "training").glob("*.py"):
        text = path.read_text()
        for banned in ("celery", "sqlalchemy", "fastapi", "app.", "httpx"):
            assert f"import {banned}" not in text and f"from {banned}" not in text, (
                path.name,
                banned,
            )


def test_app_never_imports_worker() -> None:
    for path in (ROOT / "app").rglob("*.py"):
        if path.name == "cli.py":
            continue  # the CLI starts workers, importing them inside the command only
        imports = {
            line.split()[1]
            for line in path.read_text().splitlines()
            if line.startswith(("from worker", "import worker"))
        }
        assert imports <= SHARED, (path, imports)
