"""`finetune` command line: up | api | worker | db upgrade | keys create.

Worker code is imported only inside the `worker` command, so `finetune api` never loads
torch at start.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys

from app.core.config import get_settings
from app.core.logs import configure as configure_logs

log = logging.getLogger("finetune")


def _serve(host: str, port: int) -> None:
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(), host=host, port=port, log_config=None)


def cmd_api(args: argparse.Namespace) -> None:
    _serve(args.host, args.port)


def cmd_worker(args: argparse.Namespace) -> None:
    from worker.celery_app import app

    settings = get_settings()
    argv = [
        "worker",
        "--loglevel",
        args.loglevel,
        "--concurrency",
        str(args.concurrency),
        "--queues",
        args.queues or settings.queue_name,
        "--pool",
        "prefork",
    ]
    if settings.embedded_broker:
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv)


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    from app.core.migrate import upgrade

    upgrade(get_settings().database_url, args.revision)
    print(f"database at {args.revision}")


def cmd_keys_create(args: argparse.Namespace) -> None:
    """Print a new API key once; only its hash is stored."""
    from app.core.db import session_scope
    from app.core.keys import create_key

    with session_scope(get_settings().database_url) as session:
        key, tenant = create_key(session, args.tenant)
        session.commit()
    print(key)
    print(f"tenant {tenant.name} ({tenant.id}); this key is shown only once", file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> None:
    """Migrations, one worker process and the API in the foreground; Ctrl-C stops all."""
    from app.core.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--concurrency", "1"])
    log.warning("worker pid %d; API on http://%s:%d", worker.pid, args.host, args.port)
    try:
        _serve(args.host, args.port)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("up", cmd_up, "API + worker + embedded broker, all in one"),
        ("api", cmd_api, "the HTTP API"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--host", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=8000)
        sp.set_defaults(func=func)
    sp = sub.add_parser("worker", help="a training worker")
    sp.add_argument("--concurrency", type=int, default=1, help="training processes (one per GPU)")
    sp.add_argument("--queues", default=None, help="comma-separated queues to consume")
    sp.add_argument("--loglevel", default=os.environ.get("FINETUNE_LOG_LEVEL", "INFO"))
    sp.set_defaults(func=cmd_worker)
    db = sub.add_parser("db", help="database administration").add_subparsers(
        dest="db_command", required=True
    )
    sp = db.add_parser("upgrade", help="apply Alembic migrations")
    sp.add_argument("revision", nargs="?", default="head")
    sp.set_defaults(func=cmd_db_upgrade)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    sp = keys.add_parser("create", help="create a key for a tenant (created if new)")
    sp.add_argument("--tenant", required=True)
    sp.set_defaults(func=cmd_keys_create)
    return p


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    configure_logs(settings.log_format, settings.log_level)
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
