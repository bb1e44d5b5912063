"""The benchmark scripts run end to end on their tiny setting (figures are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
BENCH_TIMEOUT_S = 900


# The packages of the web and queue stack, none of which a GPU machine's stock PyTorch image
# has: the training benches (`--only train --only core`) must run without them.
SERVICE_PACKAGES = (
    "app",
    "fastapi",
    "starlette",
    "celery",
    "kombu",
    "sqlalchemy",
    "httpx",
    "redis",
)


def _bench(out: Path, *args: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({blocked!r}))\n"  # None: importing them fails
        "from benchmarks.run import main\n"
        f"main({[*args, '--tiny', '--out', str(out)]!r})\n"
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BENCH_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr or b""  # bytes on POSIX even with text=True
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        pytest.fail(f"tiny benchmarks still running after {BENCH_TIMEOUT_S} s:\n{stderr[-3000:]}")


# pytest-timeout's limit above the subprocesses', so a slow run fails with the bench's
# stderr; the service processes the bench started die with it (tests/support/processes.py).
@pytest.mark.timeout(2 * BENCH_TIMEOUT_S + 60)
def test_benchmarks_run_on_the_tiny_setting(tmp_path: Path) -> None:
    training = _bench(
        tmp_path / "training.json", "--only", "train", "--only", "core", blocked=SERVICE_PACKAGES
    )
    assert training.returncode == 0, training.stderr[-3000:]
    out = tmp_path / "results.json"
    done = _bench(out, "--only", "service")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    results["rows"] = json.loads((tmp_path / "training.json").read_text())["rows"] + results["rows"]
    names = {row["benchmark"] for row in results["rows"]}
    assert {
        "training throughput",
        "linear probe epoch",
        "service overhead",
        "dispatch latency",
        "GET /v1/jobs/{id} while training",
        "predict, 32 concurrent clients",
        "CPU convolutions",
    } <= names
    assert all(row.get("ratio", 1) > 0 for row in results["rows"])
    training = [r for r in results["rows"] if r["benchmark"] == "training throughput"]
    assert all(r["reference loss"] > 0 and r["service loss"] > 0 for r in training)
    ceilings = {"training throughput": "model-only ratio", "predict": "forward ceiling ratio"}
    for prefix, ceiling in ceilings.items():
        assert all(r[ceiling] > 0 for r in results["rows"] if r["benchmark"].startswith(prefix))
    kernels = [r for r in results["rows"] if r["benchmark"] == "CPU convolutions"]
    assert {"GEMMs" in r["setting"] for r in kernels} == {True, False}  # both kernel choices
    assert all(r["service ÷ fp32"] > 0 for r in kernels if "bf16" in r["setting"])
    overhead = next(r for r in results["rows"] if r["benchmark"] == "service overhead")
    assert overhead["steps ratio"] > 0 and overhead["CPU ratio"] > 0
    assert "service's own s" in overhead
    latency = [r["setting"] for r in results["rows"] if r["benchmark"].startswith("GET")]
    assert any("offered" in s for s in latency) and any("saturated" in s for s in latency)
    assert "| benchmark |" in done.stdout and results["machine"]["torch"]
