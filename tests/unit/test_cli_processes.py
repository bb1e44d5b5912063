"""`up`'s workers and the test harness's service processes die with their parent."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PARENT = """
import subprocess, sys, time
from app.cli import terminate_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=terminate_with_parent()
)
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by whoever adopted it) is not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in {"Z", "X"}


def test_a_child_gets_sigterm_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()  # SIGKILL: no handler, no `finally` of the parent's runs
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_missing_tmpdir_is_made_before_anything_spools(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The image's TMPDIR is on the work volume, which an older image made without it:
    Python fell back to /tmp, in the container's writable layer, without a word."""
    import tempfile

    from app import cli

    folder = tmp_path / "work" / "tmp"
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    cli._temp_folder()
    assert folder.is_dir() and tempfile.gettempdir() == str(folder)
