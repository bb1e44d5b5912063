"""Fault injection for the durability tests (never set in production).

`FINETUNE_FAULTS` holds comma-separated `name=value` pairs, read when a job starts:
- `oom_above=N`: a forward pass on more than N images raises torch.OutOfMemoryError;
- `crash_at_step=N`: the worker process kills itself (SIGKILL) at step N of every attempt;
- `step_delay=S`: sleep S seconds after every step, so tests can act mid-epoch;
- `decode_delay=S`: sleep S seconds after every image decoded (and every file fetched from
  a remote store), so tests can act mid-decode;
- `crash_before_success=N`: attempt N kills its worker process (SIGKILL) once the last
  epoch's files are written, before the job's success is committed;
- `pause_before_success=S`: sleep S seconds there instead (logged), so tests can act then.
"""

import logging
import os
import signal
import time

import torch

ENV = "FINETUNE_FAULTS"
log = logging.getLogger(__name__)


class Faults:
    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(ENV, "") if spec is None else spec
        pairs = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
        self.oom_above = int(pairs["oom_above"]) if "oom_above" in pairs else None
        self.crash_at_step = int(pairs["crash_at_step"]) if "crash_at_step" in pairs else None
        self.step_delay = float(pairs.get("step_delay", 0))
        self.decode_delay = float(pairs.get("decode_delay", 0))
        self.crash_before_success = int(pairs.get("crash_before_success", 0))
        self.pause_before_success = float(pairs.get("pause_before_success", 0))
        self.steps = 0

    def before_batch(self, size: int) -> None:
        if self.oom_above is not None and size > self.oom_above:
            raise torch.OutOfMemoryError(f"injected: batch of {size} > {self.oom_above}")

    def after_step(self) -> None:
        self.steps += 1
        if self.crash_at_step is not None and self.steps >= self.crash_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.step_delay:
            time.sleep(self.step_delay)

    def after_decode(self) -> None:
        if self.decode_delay:
            time.sleep(self.decode_delay)

    def before_success(self, attempt: int) -> None:
        if attempt == self.crash_before_success:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pause_before_success:
            log.warning("fault: pausing %s s before success", self.pause_before_success)
            time.sleep(self.pause_before_success)
