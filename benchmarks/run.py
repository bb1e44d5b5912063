"""Run every benchmark side by side, print one table and write JSON (make bench)."""

import argparse
import tempfile
from pathlib import Path

from benchmarks import train_throughput
from benchmarks.common import machine, table, write_json

BENCHES = {"train": train_throughput.run}
COLUMNS = [
    "benchmark",
    "setting",
    "reference img/s",
    "service img/s",
    "ratio",
    "reference acc",
    "service acc",
    "peak RSS MiB",
    "peak CUDA MiB",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smallest settings (the test suite's)")
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        for name in args.only or BENCHES:
            rows += BENCHES[name](Path(tmp) / name, args.tiny)
    print(table(rows, COLUMNS))
    write_json(args.out, {"machine": machine(), "tiny": args.tiny, "rows": rows})


if __name__ == "__main__":
    main()
