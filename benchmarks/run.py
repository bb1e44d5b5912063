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
    print(table(rows, columns(rows)))
    write_json(args.out, {"machine": machine(), "tiny": args.tiny, "rows": rows})


if __name__ == "__main__":
    main()
