"""Run every benchmark side by side, print one table and write JSON (make bench).

`reference` columns are the baseline measured in the same run (the textbook loop, the
full forward, one forward per request, the core without the service); `ratio` is
service ÷ reference for throughputs and times alike, so read it with the row's unit.
"""

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import core_bench, kernel_bench, train_throughput
from benchmarks.common import machine, table, write_json

BENCHES = ("train", "core", "service")
PG_ADMIN = os.environ.get("FINETUNE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("FINETUNE_BENCH_REDIS", "redis://127.0.0.1:6379/12")


@contextlib.contextmanager
def bench_database() -> Iterator[str | None]:
    """A fresh, migrated Postgres database for the Redis + Postgres rows (None if unreachable)."""
    from sqlalchemy.exc import OperationalError

    from tests.support.databases import fresh_database

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_database(PG_ADMIN, f"finetune_bench_{os.getpid()}"))
        except OperationalError:  # no Postgres here: those rows are left out
            url = None
        yield url


def columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smallest settings (the test suite's)")
    parser.add_argument("--only", choices=BENCHES, action="append")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--results-md", type=Path, default=None, help="also write RESULTS.md here")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        for name in args.only or BENCHES:
            work = Path(tmp) / name
            if name == "train":
                rows += train_throughput.run(work, args.tiny)
            elif name == "core":
                rows += core_bench.run(work, args.tiny) + kernel_bench.run(args.tiny)
            else:
                # Imported here: `--only train --only core` need the training stack alone, as
                # a GPU machine's stock PyTorch image has it (no web or queue packages).
                from benchmarks import service_bench

                with bench_database() as database_url:
                    rows += service_bench.run(work, args.tiny, database_url, database_url and REDIS)
            # Partial results survive a later benchmark's failure.
            write_json(args.out, {"machine": machine(), "tiny": args.tiny, "rows": rows})
    print(table(rows, columns(rows)))
    info = machine()
    write_json(args.out, {"machine": info, "tiny": args.tiny, "rows": rows})
    if args.results_md:
        args.results_md.write_text(results_markdown(info, rows))


@dataclass(frozen=True)
class Target:
    bench: str
    setting: str  # a part of the row's setting
    column: str
    op: str  # ">=" or "<="
    value: float
    text: str  # what the issue asks
    ceiling: str | None = None  # the column with this hardware's bound, where one is measured


TARGETS = [
    Target("training throughput", "32px", "ratio", ">=", 1.3, "≥1.3× the textbook loop at 32 px",
           "model-only ratio"),
    Target("training throughput", "224px", "ratio", ">=", 3.5,
           "≥3.5× the textbook loop at 224 px", "model-only ratio"),
    Target("service overhead", "", "ratio", "<=", 1.10, "job wall time ≤1.10× the core's time"),
    Target("linear probe epoch", "", "ratio", "<=", 0.10,
           "cached-feature epoch ≤0.1× a full forward epoch"),
    Target("predict, 32 concurrent clients", "", "ratio", ">=", 3.0,
           "micro-batching ≥3× one forward each", "forward ceiling ratio"),
    Target("GET /v1/jobs/{id} while training", "offered", "p99 ms", "<=", 50.0,
           "p99 <50 ms while a job trains (100 req/s offered)"),
    Target("GPU training steps, model alone", "resnet50", "service img/s", ">=", 2700,
           "ResNet50 224 px on a GPU against PyTorch AMP's ≈2,700 img/s on an H100"),
]  # fmt: skip


NOTES = """
## Reading these figures

- The machine is a shared 2-core VM whose speed drifts during a day: the same textbook loop
  at 32 px measured 759 img/s in one run and 466 img/s two hours later. Compare ratios
  within one run; figures from different runs are not comparable, and ratios themselves
  moved by ±20 % between runs of the same code (see the history in the issue notes).
  Runs 23 and 24 (2026-12-04 12:47 and 13:18 UTC) ran the same code on the same host half
  an hour apart, with nothing else running: 1.23× and 1.54× the textbook loop at 32 px,
  2.80× and 3.86× at 224 px, micro-batching 3.13× and 2.45×, the API's p99 while a job
  trained 59 and 29 ms. Four of the six targets were met in one run and missed in the other.
  Run 25 (19:51 UTC, another machine of the same kind) met three: 1.65× at 32 px, 3.14×
  at 224 px, micro-batching 2.70× against a forward ceiling of 2.88×. Run 26 (2026-12-05
  01:51 UTC, again an AVX512-BF16 EPYC) met the same three: 1.39×, 3.17×, 2.61× against 2.96×.
- Runs also land on different hosts under the same CPU name; the header's instruction set
  and CPU autocast say which. Where the CPU runs bf16 natively (AVX512-BF16 or AMX) the
  service trains images of 64 px and up in bf16 + channels_last. At 224 px its steps alone
  ran 3.13× and 3.44× fp32 steps on two AMX Xeons (rows 3.09× and 4.47×, the second in run
  15, 2026-12-01 19:14) and 2.47× and 2.66× in two runs on an AVX512-BF16 EPYC without AMX
  (rows 2.89× and 3.02×). Below 64 px the service trains in fp32 on every CPU: on an AMX
  host bf16 steps were slower (0.69× at 32 px; on the second, bf16 convolutions' backward
  took 86 ms a step against fp32's 71 ms, torch.profiler); on the AVX512-BF16 EPYC they were
  faster alone (1.3-1.7× at 32 px), but whole 32 px epochs gained 0.96-1.48× in five runs
  and one of four 16 px runs diverged (worker/training/precision.py). Inside bf16 training,
  depthwise convolutions run in fp32: oneDNN's bf16 ones made MobileNetV3 and EfficientNet
  steps slower than fp32 steps on the AMX Xeon of runs 17 and 18 (worker/training/convs.py):
  in run 18's `CPU convolutions` rows bf16 steps ran 0.45× (MobileNetV3-Small, 64 px) and
  0.76× (EfficientNet-B0, 128 px) the fp32 steps with oneDNN's bf16 depthwise layers, 0.96×
  and 1.22× with fp32 ones; on the AVX512-BF16 EPYC of runs 19 and 20 (2026-12-02) 0.42×
  and 0.41× (MobileNetV3-Small), 0.69× and 0.73× (EfficientNet-B0) before, 1.21× and
  1.01×, 1.20× and 1.30× after.
- What the service changes at 32 px is a kernel. ResNet18's last stage runs on 1×1 maps
  there, and oneDNN's convolution backward for them took ~125 ms per layer against ~3 ms
  forward on an AVX2 EPYC, half of every step (torch.profiler). A convolution with one
  output position is a matrix product, so on CPUs the service runs those layers as GEMMs on
  the same parameters (worker/training/convs.py): `model-only ratio` at 32 px is that plus
  channels_last, 2.78× on the AVX2 EPYC of run 16 (2026-12-01 22:36; the row 2.84×) and
  1.97× in a training-only run an hour earlier (the row 3.02×). Before it, channels_last
  alone gave 1.06× on an AVX2 host, 0.91-1.05× on the AVX512 EPYC and 0.95× on the second
  AMX Xeon, and the 32 px row (1.07-1.28×) showed mostly what the data path gains. The slow
  path is smaller on an AMX Xeon (runs 17 and 18, 2026-12-02): there the GEMMs made fp32
  steps 1.19× faster for ResNet18 and 1.58× for ResNet50 (run 18's `CPU convolutions` rows),
  `model-only ratio` was 1.13× and 1.17× and the row 1.38× and 1.35×. On the AVX512-BF16
  EPYC of runs 19 and 20 they made fp32 steps 1.25× and 1.21× faster for ResNet18, 1.35×
  and 1.19× for ResNet50 (1.65× and 1.34× in a kernel-only run before run 19); `model-only
  ratio` was 1.29× and 1.21×, the row 1.41× and 1.39×.
- `CPU convolutions` rows time training steps on one resident batch with the trainer's CPU
  convolutions (worker/training/convs.py) against plain nn.Conv2d, both channels_last, in
  alternated rounds: the single-position GEMMs in fp32, and depthwise layers in fp32 inside
  bf16 autocast. The bf16 rows' `reference ÷ fp32` and `service ÷ fp32` are bf16 steps over
  the service's fp32 steps, before and after: below 1, `mixed_precision: auto` would slow
  that backbone down. They run only where the CPU has native bf16 units.
- The service's side of the training rows and the core runs of the overhead row run in a
  separate long-lived process with the worker's training heap (glibc keeps the memory a
  step frees instead of unmapping it and faulting it back in; worker/training/heap.py),
  as a worker's pool child runs a job. The textbook loop and the model-alone steps run in
  the benchmark process with glibc's defaults, as users run them.
- The 224 px rows train from random initialisation for two short epochs (14 steps), so both
  loops stay at chance accuracy there: the training loss falls, but BatchNorm's running
  statistics have not caught up for evaluation (fine-tuning from weights trained on these
  digits at 32 or 64 px reached only 0.35 in the same steps). `reference loss` and `service
  loss`, the last epoch's mean training loss, show whether both learned alike; the 32 px row
  is the accuracy comparison, equal within noise: one seed's 364 test images move by several
  points from seed to seed, so a run's pair can land either way (0.896 against the textbook
  loop's 0.918 in runs 17 and 18, same seed and host, 0.929 against 0.898 in run 16). Over
  five more seeds on the AMX Xeon of run 17 the means were 0.899 (service) and 0.894
  (textbook loop), per-seed differences -3.3 to +4.6 points.
- At 224 px the model itself is the bottleneck on these CPUs: convolutions are ~80 % of a
  step (torch.profiler), and `model-only ratio` (the service's precision and layout against
  fp32 steps, on resident tensors) is what they alone give. The service's row lands above it
  because the textbook loop also pays for PIL decoding in DataLoader workers that compete
  for the same two cores (the row over the model alone: 1.30× on the second AMX Xeon,
  1.13-1.17× on the EPYC). So whether 3.5× is reached depends on the host's matrix units:
  met on the second AMX Xeon (4.47×) and on the AMX Xeon of runs 17 and 18 (4.31× and
  4.04×), and on the AVX512-BF16 EPYC in runs 22 and 24 (3.58× and 3.86×, the model
  alone 2.62× and 2.74×); missed on the first AMX Xeon (3.09×), on the AVX512-BF16 EPYC
  in the other runs (2.89-3.02×; 3.41× in runs 19 and 20, the model alone 2.91× and 2.75×;
  2.80× in run 23; 3.14× in run 25, the model alone 2.69×) and on AVX2, which has no native
  bf16 (1.24×).
- `CPU training steps, model alone` says why, with the FLOPs: the 224 px row's model at batch
  32, each side's TFLOP/s (torch's FLOP count of a step over its time) set against square
  matmuls timed in the same run in the dtype that side computes in (`of matmul`: the
  service's bf16 against bf16 matmuls, `reference of matmul`: fp32 against fp32). In run 26
  the service's bf16 step ran at 0.376 TFLOP/s, 91 % of what bf16 matmuls reached (0.413),
  and the textbook loop's fp32 step at 0.164, 84 % of fp32 matmuls (0.195). On the same
  host convolutions were 88 % of a bf16 step, their backward twice their forward, as their
  FLOPs are (torch.profiler). Both steps already run near their units' limit: a bf16 step at
  the full speed of bf16 matmuls would be 0.413 ÷ 0.164 = 2.5× the fp32 one at batch 32
  (measured 2.3×; `model-only ratio` at the row's batch 100, 2.66×). The row itself, 3.17×,
  is the service at its model's speed (34.4 img/s, the steps alone 35.3) over a textbook loop
  that its PIL decoding already holds to 71 % of its own model's speed (10.9 against 15.4):
  3.5× needs faster bf16 units or a slower textbook loop, not a faster service, so on this
  host type the 224 px target comes and goes with the day.
- Service overhead compares each job with a core run right beside it, in six pairs whose
  order alternates (job first, then core first), and takes the median of the pairs' ratios:
  the machine's speed moves by tens of percent within minutes (one 10-epoch job's epochs ran
  between 101 and 221 img/s), so medians of separate runs, as earlier versions took, swung
  between 0.91 and 1.40. `pair ratios` shows the spread. A job's wall time runs from sending
  its POST to the `finished_at` the service recorded, not to whenever the client's polling
  noticed. Each pair is also split by the epochs' own images/s: `steps ratio` is the job's
  time inside training steps over the core's (the pool child's steps against the bare
  core's), `service's own s` the job's time outside its steps minus the core's (dispatch,
  checkpoints, events, the final commit), the part drift barely moves. `CPU ratio` is the
  work done: CPU seconds of every process of the service during the job (the API answering
  the client's polls, Celery parents, broker polling, the pool child with its checkpoint
  writer and lease threads) over the core process's own. Drift stretches it far less than
  wall time, so it is the steadier figure of what the service adds; a wall ratio above it is
  time the job waited or was crowded out, not work. The same 4-epoch job took the core 15.8
  s on the AVX2 EPYC of run 16 (ratio 1.13), 10.5 s on the AVX512 EPYC (1.13), 7.2 s on the
  second AMX Xeon (1.21) and 8.4-8.7 s on the AMX Xeon of runs 17 and 18 (1.22, 1.23); the
  service's own seconds were 0.84, ~0.6, ~0.6 and 0.66-0.69 s and the pool child's steps ran
  1.10×, 1.08×, 1.15× and 1.17-1.18× the bare core's. Per thread (/proc, sampled every 50 ms
  through an 8.5 s job on the AMX Xeon): the two training threads 7.9 and 7.5 s, the
  checkpoint writer 0.53 s (four epochs' weights and optimiser state: write, fsync, sha256),
  the API answering the client's polls 0.17 s, the Celery parents 0.05 s; the others woke
  ~700 times in all. Beside the bare core, in alternated rounds: the same checkpoint writer
  slowed it by 4.7 % (no better with the writer thread at nice 19), a process that woke 90
  times a second and used 1.8 % of the two cores by 2.9 %, and a fork from a parent that had
  imported the worker instead of a spawn by 0-3 %. Together about two thirds of the steps'
  15 %. On the AVX512-BF16 EPYC of run 19 the core took 8.1 s (ratio 1.19, steps 1.13×,
  own 0.68 s); over 8 pairs there the job's four epochs ran 0.95×, 0.83×, 0.88× and 0.94×
  the core's: the first, with no checkpoint being written beside it, lost least. Since the
  last epoch writes no optimiser state and commits with the job's success (README, Exact
  resume), the same host's own seconds were 0.51 s (8 pairs, ratio 1.21, steps 1.18×) and
  0.59 s in run 20 (ratio 1.25, steps 1.21×, core 9.1 s), an hour when the same host's API
  served half run 19's requests a second; 20 minutes later a run of the service rows alone
  gave 0.42 s (ratio 1.15, steps 1.12×; the API back at 395 req/s, p99 16.7 ms). In run 22
  (2026-12-04), with the embedded broker's workers waking on inotify instead of polling, the
  same host gave 1.13 (steps 1.14×, own 0.19 s, CPU ratio 1.15, core 7.1 s), and in runs
  23 and 24 1.12 (steps 1.10×, own 0.22 s, CPU ratio 1.13, core 8.5 s) and 1.19 (steps
  1.19×, own 0.30 s, CPU ratio 1.19, core 8.8 s), in run 25 1.19 again (steps 1.17×, own
  0.18 s, CPU ratio 1.19, core 6.95 s), in run 26 1.16 (steps 1.14×, own 0.18 s, CPU ratio
  1.17, core 6.07 s). The pool child's OpenMP threads spin briefly between operations
  (libgomp's default); right after run 26, in rounds of 4 pairs, `OMP_WAIT_POLICY=PASSIVE`
  for the service's processes made them sleep instead: CPU ratio 1.05 and 1.08 against
  1.12 and 1.12, but wall ratio 1.24 and 1.28 against 1.11 and 1.12 (steps 1.24× and 1.27×
  against 1.09× and 1.10×), and `ACTIVE` left every idle pool child with torch loaded spinning
  at ~85 % of a core: the default stays. Timed per
  call inside a worker there (2026-12-04, the 4-epoch job): each CPU copy an epoch makes
  (weights, optimiser state) faulted ~7k fresh pages in during the first epoch, 20-100 ms of
  the training thread each (5-10 ms later), so fit's best state and the checkpoint now share
  one copy (the training thread's time in on_epoch_end fell from 0.21-0.29 s to 0.05-0.12 s
  a job); the writer thread beside training spent 45-140 ms of CPU on an epoch's weights
  file and 55-140 ms on its optimiser state, against 41 and ~15 ms alone. Without the
  optimiser state files (alternated pairs, 7 each) the ratio was 1.19 against 1.20: within
  the noise, as were the client polling every 2 s instead of every 0.25 s (1.14 against 1.17)
  and the training child at nice 0 instead of 10 (1.12 against 1.06).
  On an AVX2 EPYC (2026-12-02 09:00) the service rows gave 1.21 (steps 1.19×, own 0.50 s,
  core 9.9 s). Beside it, in alternated pairs, neither the training child's priority (nice
  10 against 0: 1.13 against 1.11) nor the client's polling (every 0.25 s against every
  2 s: 1.13 against 1.12) moved the ratio beyond the noise, and in-process the reporter's
  background writes made steps 1.035× and 1.08× slower in two runs (4 and 5 rounds).
  On an Intel Xeon with AVX512 but no bf16 (Ice Lake flags; 2026-12-02 15:35, the overhead
  row alone, same spec) the ratio was 1.00 over 4 pairs (0.85-1.31) and 1.09 over 8 right
  after (0.98-1.28; steps 1.07×, own 0.40 s, CPU ratio 1.08, core 11.9 s).
- API latency is measured two ways. The target row offers 100 requests/s on an open loop
  (the load of a hundred clients polling their job once a second): each request has a due
  time and its latency counts from it, so a stalled server is charged for every request it
  held up. The saturated row runs 8 clients flat out; its latency is mostly the server's
  own queue (clients ÷ throughput), so it shows capacity (req/s), not the latency of a
  stated load. The target row's tail rests on how much of that capacity 100 req/s takes:
  on a fast day the saturated row reached 344 req/s and the target row's p99 was 20 ms; on
  a day when the same VM served 153 req/s (and the textbook loop ran at two thirds of its
  speed), p99 was 89 ms. `idle p99 ms`, the same load with no job, shows which day it was.
  On the AVX512-BF16 EPYC the saturated row served 456 req/s in run 19 (p99 while training
  12.7 ms) and 233 req/s an hour later in run 20 (p99 71 ms, 43 ms with no job at all);
  430 req/s in run 22 (p99 while training 15.1 ms, 8.5 ms with no job), 268 and 255 req/s
  in runs 23 and 24 (59 and 29 ms while training, 9.5 and 9.8 ms with no job), 472 req/s
  in run 25 (13.2 ms while training, 7.4 ms with no job).
- `forward ceiling ratio` is what micro-batching saves in the model itself: a 32-image
  forward of the served model against 32 one-image forwards, in-process on idle cores. On
  the AVX2 host and the AVX512 EPYC a one-image forward already keeps both cores busy, so
  batching gained 1.9-3× there, not the ≥10× of a GPU; on the second AMX Xeon it gained
  6.09×. The end-to-end ratio follows it loosely, on either side: 3.79 against 6.09 on that
  AMX Xeon, 3.65 against 5.31 and 3.78 against 6.23 on the AMX Xeon of runs 17 and 18, 3.16
  against 2.53, 2.55 against 3.02, 2.87 against 2.84, 2.43 against 2.86 and 2.92 against
  3.00 in five runs on the AVX512 EPYC (the last three runs 19, 20 and 22; folding each
  BatchNorm into its convolution made both sides 3-6 % faster there and left the ceiling
  where it was, so the service does not), then 3.13 against 3.01 and 2.45 against 3.03 in
  runs 23 and 24, with requests waiting for their batch and for a model's load on the event
  loop instead of in threads (right after run 24, the predict row alone in alternated
  rounds gave 3.07 and 2.96 for this code, 2.97 and 2.68 for the code of run 22), 2.70
  against 2.88 in run 25, with a request's place in the queue taken before its uploads are
  read and decoded (the bound then also holds the images being decoded), 2.61 against 2.96
  in run 26, and 1.88 against 1.89 and 2.15 against 2.36 in two runs on AVX2 hosts. The
  ceiling is measured on idle cores; served forwards share the two cores with the load
  generator and 32 requests' HTTP and decoding, which moves both sides of the end-to-end
  ratio from run to run.
- `torch.compile` does not pay reliably on these CPUs: its later epochs ran 1.07× eager on
  the second AMX Xeon, 1.13× and 0.96× on the AMX Xeon of runs 17 and 18, 1.11×, 0.95×,
  0.93×, 1.21×, 0.76×, 1.26×, 1.05×, 1.49× and 0.94× in nine runs on the AVX512 EPYC (the
  last runs 22 to 26) and 0.73× and 1.00× on AVX2 hosts, after a first epoch that spends
  20-95 s compiling (12 s in run 20 and 8.9 s in run 24, when inductor's cache in /tmp was
  warm from the run before; 48 s, 70 s, 47 s and 42 s in runs 22, 23, 25 and 26, each on a
  new machine).
- Predict and API-latency rows run the load generator on the same two cores as the service.
- Dispatch latency with the embedded broker is a wait for a file: idle workers wake when a
  message is renamed into their queue folder (inotify; app/core/filebroker.py). In run 22 it
  was 7.6 ms at the median (max 15.9 ms) against Redis's 9.6 ms, in runs 23 and 24 9.9 and
  9.6 ms against 10.3 and 14.0 ms, in run 25 11.2 ms against 12.3 ms, in run 26 6.5 ms
  against 7.9 ms; in run 20, when workers polled the folder every 0.2 s, 41 ms (max 104 ms).
- No CUDA GPU was available to this run: ResNet50 / ViT-B/16 rows and peak CUDA memory are
  measured only where one is (`make bench` adds them automatically). There the training
  rows add ten epochs of each at 224 px against the textbook loop (its DataLoader with one
  worker per core, up to 8), and `GPU training steps, model alone`: batch 256, the service's
  bf16 autocast and channels_last against fp32, with the TFLOP/s a step achieves (torch's
  FLOP count of one step) set against square bf16 matmuls timed in the same run, the most
  the device's matrix units give (the reference's against fp32 matmuls, which do not use
  TF32, while cuDNN's convolutions may: its `reference of matmul` can pass 1 there). The
  ResNet50 row is the one to read against the ≈2,700 img/s of PyTorch's AMP example on an
  H100. A GPU machine's stock PyTorch image needs nothing more for these rows:
  `python3 -m benchmarks.run --only train --only core` imports none of the service's web or
  queue packages.
"""


def results_markdown(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """RESULTS.md: the machine, the whole table, and each target met or missed."""
    lines = [
        "# Benchmark results",
        "",
        f"Last full run of `make bench`: {info['date']}, {info['cpu']} "
        f"({info['threads']} threads, {info.get('isa', '?')}, native bf16: "
        f"{info.get('bf16 units', '?')}, CPU autocast "
        f"{info.get('cpu autocast', '?')}), GPU: {info['gpu'] or 'none'}, "
        f"Python {info['python']}, torch {info['torch']}.",
        "Every figure below was measured in that one run, side by side; `ratio` = service ÷ "
        "reference. The raw numbers are in `results.json`.",
        "",
        table(rows, columns(rows)),
        "",
        "## Targets",
        "",
        "`model alone`: the same comparison for the model alone on this hardware, with no data",
        "path, HTTP or queueing, measured in the same run. For training it is what the",
        "service's precision, channels_last and CPU kernels give by themselves (the rest of a",
        "ratio comes from the data path); for predict it is what batching saves in the model.",
        "",
        "| target | measured | model alone | met |",
        "|---|---|---|---|",
    ]
    for t in TARGETS:
        row = next(
            (r for r in rows if r["benchmark"] == t.bench and t.setting in r["setting"]), None
        )
        if row is None or row.get(t.column) is None:
            lines.append(f"| {t.text} | not measured here | | |")
            continue
        value = row[t.column]
        met = value >= t.value if t.op == ">=" else value <= t.value
        bound = row.get(t.ceiling) if t.ceiling else None
        limit = f"{bound:.3g}" if bound is not None else ""
        lines.append(f"| {t.text} | {value:.3g} | {limit} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n" + NOTES


if __name__ == "__main__":
    main()
