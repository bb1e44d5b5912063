"""The training heap keeps freed memory during a job and gives it back after."""

import subprocess
import sys
from pathlib import Path

import pytest

from worker.training import heap

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc's mallopt only")

# A step's pattern: a 64 MiB tensor written and freed. How much of it does the free unmap?
STEP = """
import sys, torch
from pathlib import Path
from worker.training import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
rss = lambda: int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
torch.ones(1 << 24).sum()
block = torch.ones(1 << 24)
held = rss()
del block
print(held - rss())
"""


def _unmapped_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", STEP, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def test_freed_memory_stays_mapped_for_the_next_step() -> None:
    """glibc's default unmaps a freed 64 MiB block (the next step faults it in page by page).

    Measured as resident memory right after the free, not as page faults over many steps:
    a host that reclaims idle pages on its own (DAMON) faults some back in either way.
    """
    assert _unmapped_mib("default") > 48
    assert _unmapped_mib("keep") < 16


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
