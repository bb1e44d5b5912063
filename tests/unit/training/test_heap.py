"""The training heap keeps freed memory during a job and gives it back after."""

import subprocess
import sys
from pathlib import Path

import pytest

from worker.training import heap

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc's mallopt only")

# A step's pattern: allocate, write and free a 64 MiB tensor, twenty times over.
STEPS = """
import resource, sys, torch
from worker.training import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(1 << 24).sum()
before = faults()
for _ in range(20):
    torch.ones(1 << 24).sum()
print(faults() - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_kept_memory_is_reused_instead_of_faulted_in_again() -> None:
    default, kept = _faults("default"), _faults("keep")
    assert default > 20 * 10_000  # each 64 MiB block mapped afresh: ~16k page faults
    assert kept < default / 4  # measured: 327k against 49k


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def test_steady_heap_hands_the_free_memory_back_when_training_ends() -> None:
    import torch

    with heap.steady_heap():
        block = torch.ones(1 << 26)  # 256 MiB from the heap, not an mmap
        del block
        held = _rss_mib()
    assert _rss_mib() < held - 128
