"""The benchmarks' CPU accounting of a process tree (/proc)."""

import os
import subprocess
import sys

from benchmarks.common import tree_cpu_seconds

# Burns about 0.5 CPU-s, says so, then waits to be told to exit.
BURN = """
import sys, time
end = time.process_time() + 0.5
while time.process_time() < end:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_a_tree_counts_its_children_alive_and_after_they_exit() -> None:
    before = tree_cpu_seconds(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"
        assert tree_cpu_seconds(child.pid) >= 0.5
        alive = tree_cpu_seconds(os.getpid()) - before
    finally:
        child.communicate("")  # exits and is reaped: its time moves to our cutime
    reaped = tree_cpu_seconds(os.getpid()) - before
    assert alive >= 0.5 and reaped >= 0.5
    assert reaped >= alive - 0.05  # nothing lost in the move


def test_a_process_that_is_gone_counts_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert tree_cpu_seconds(child.pid) == 0.0
