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
from pathlib import Path
from typing import Any

from benchmarks import core_bench, service_bench, train_throughput
from benchmarks.common import machine, table, write_json

BENCHES = ("train", "core", "service")
PG_ADMIN = os.environ.get("FINETUNE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("FINETUNE_BENCH_REDIS", "redis://127.0.0.1:6379/12")


@contextlib.contextmanager
def bench_database() -> Iterator[str | None]:
    """A fresh, migrated Postgres database for the Redis + Postgres rows (None if unreachable)."""
    from sqlalchemy import create_engine, text

    from app.core.migrate import upgrade

    name = f"finetune_bench_{os.getpid()}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        yield None
        return
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        from app.core.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
                rows += core_bench.run(work, args.tiny)
            else:
                with bench_database() as database_url:
                    rows += service_bench.run(work, args.tiny, database_url, database_url and REDIS)
            # Partial results survive a later benchmark's failure.
            write_json(args.out, {"machine": machine(), "tiny": args.tiny, "rows": rows})
    print(table(rows, columns(rows)))
    info = machine()
    write_json(args.out, {"machine": info, "tiny": args.tiny, "rows": rows})
    if args.results_md:
        args.results_md.write_text(results_markdown(info, rows))


TARGETS = [
    # (benchmark, setting contains, column, comparison, target, what the issue asks)
    ("training throughput", "32px", "ratio", ">=", 1.3, "≥1.3× the textbook loop at 32 px"),
    ("training throughput", "224px", "ratio", ">=", 3.5, "≥3.5× the textbook loop at 224 px"),
    ("service overhead", "", "ratio", "<=", 1.10, "job wall time ≤1.10× the core's time"),
    (
        "linear probe epoch",
        "",
        "ratio",
        "<=",
        0.10,
        "cached-feature epoch ≤0.1× a full forward epoch",
    ),
    (
        "predict, 32 concurrent clients",
        "",
        "ratio",
        ">=",
        3.0,
        "micro-batching ≥3× one forward each",
    ),
    ("GET /v1/jobs/{id} while training", "", "p99 ms", "<=", 50.0, "p99 <50 ms while a job trains"),
]


NOTES = """
## Reading these figures

- The machine is a shared 2-core VM whose speed drifts during a day: the same textbook loop
  at 32 px measured 759 img/s in one run and 466 img/s two hours later. Compare ratios
  within one run; figures from different runs are not comparable, and ratios themselves
  moved by ±20 % between runs of the same code (see the history in the issue notes).
- The 224 px rows train from random initialisation for two short epochs, so both loops stay
  at chance accuracy there; the 32 px row is the accuracy comparison (equal within noise).
- On this CPU the model itself is the bottleneck at 224 px: ResNet18 fwd+bwd in bf16 with
  channels_last ran at about 55 img/s in isolation on a quiet machine, the ceiling of the
  service's row; the textbook loop loses most to fp32 and PIL resizing in DataLoader workers
  that compete for the same two cores.
- Service overhead on this setting (10 epochs of about 1.5 s each) comes mostly from the
  per-epoch checkpoint: 45 MB of weights and 45 MB of optimizer state serialised, hashed
  and fsynced each epoch (about 0.3 s of CPU, measured alone) by a background thread that
  competes with training for the two cores. Epochs of minutes make it negligible.
- Predict and API-latency rows run the load generator on the same two cores as the service.
- No CUDA GPU was available to this run: ResNet50 / ViT-B/16 rows and peak CUDA memory are
  measured only where one is (`make bench` adds them automatically).
"""


def results_markdown(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """RESULTS.md: the machine, the whole table, and each target met or missed."""
    lines = [
        "# Benchmark results",
        "",
        f"Last full run of `make bench`: {info['date']}, {info['cpu']} "
        f"({info['threads']} threads), GPU: {info['gpu'] or 'none'}, "
        f"Python {info['python']}, torch {info['torch']}.",
        "Every figure below was measured in that one run, side by side; `ratio` = service ÷ "
        "reference. The raw numbers are in `results.json`.",
        "",
        table(rows, columns(rows)),
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for bench, setting, column, op, target, text in TARGETS:
        row = next((r for r in rows if r["benchmark"] == bench and setting in r["setting"]), None)
        if row is None or row.get(column) is None:
            lines.append(f"| {text} | not measured here | |")
            continue
        value = row[column]
        met = value >= target if op == ">=" else value <= target
        lines.append(f"| {text} | {value:.3g} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n" + NOTES


if __name__ == "__main__":
    main()
