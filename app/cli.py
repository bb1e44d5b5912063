"""`finetune`: run the service (up, api, worker, db, keys) or use it over HTTP (datasets, jobs,
models, predict; see app.cli_client).

Worker code is imported only inside the `worker` command, so `finetune api` never loads
torch at start.
"""

import functools
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from app.cli_client import register_client_commands
from app.core.config import get_settings
from app.core.logs import configure as configure_logs

log = logging.getLogger("finetune")
app = typer.Typer(
    help="Run the fine-tuning service, or use it over HTTP.",
    no_args_is_help=True,
    add_completion=False,
)
db = typer.Typer(help="Database administration.", no_args_is_help=True)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db, name="db")
app.add_typer(keys, name="keys")
register_client_commands(app)

Host = Annotated[str, typer.Option(help="Interface to listen on.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]


def _serve(host: str, port: int) -> None:
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(), host=host, port=port, log_config=None)


@app.callback()
def _logging() -> None:
    settings = get_settings()
    configure_logs(settings.log_format, settings.log_level)
    _temp_folder()


def _temp_folder() -> None:
    """Make TMPDIR if it is set and missing. The image points it at the work volume, where
    uploads spool as they stream in; a volume made by an older image lacks the folder, and
    Python would then fall back to /tmp, in the container's writable layer, silently."""
    if folder := os.environ.get("TMPDIR"):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError:
            logging.getLogger(__name__).warning("TMPDIR %s cannot be made", folder, exc_info=True)
        tempfile.tempdir = None  # chosen again on first use


@app.command()
def api(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """The HTTP API."""
    _serve(host, port)


@app.command()
def worker(
    concurrency: Annotated[
        int,
        typer.Option(
            help="Training processes; with device auto, process k trains on GPU k (mod the "
            "host's GPU count): one per GPU."
        ),
    ] = 1,
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated queues to consume (default: the gpu and cpu queues)."),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery's log level.")] = "INFO",
) -> None:
    """A worker: training from the gpu queue, exports from the cpu queue (or those named)."""
    from worker.celery_app import app as celery

    settings = get_settings()
    argv = [
        "worker",
        "--loglevel",
        loglevel,
        "--concurrency",
        str(concurrency),
        "--queues",
        queues or f"{settings.gpu_queue},{settings.cpu_queue}",
        "--pool",
        "prefork",
        # Mingle (revoked ids and clocks from other workers, a 1 s wait at every start on
        # Redis) and gossip serve task revocation, which this service never uses: a job is
        # cancelled through its row, and workers report to the worker table.
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.embedded_broker:  # no broadcast channel for heartbeat events
        argv += ["--without-heartbeat"]
    celery.worker_main(argv)


def terminate_with_parent() -> Callable[[], object] | None:
    """A `preexec_fn` that makes the child get SIGTERM when its parent dies (Linux prctl).

    None where there is no prctl. libc is loaded here, in the parent: between fork and exec
    the child only makes the call (a dlopen there could wait on a lock another thread held).
    """
    import ctypes

    pr_set_pdeathsig = 1
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return functools.partial(prctl, pr_set_pdeathsig, signal.SIGTERM)


@app.command()
def up(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Migrations, a training worker, an export worker and the API; Ctrl-C stops all.

    Two workers, as in production: with one, a job submitted while the last model's
    exports run would wait seconds for them (measured: 3.5 s dispatch instead of 0.08 s).
    """
    from app.core.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    # Uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # handler that kills this process before `finally` can stop the worker, orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Each worker in its own session: a signal to this whole process group (a terminal's
    # Ctrl-C, `kill -- -PGID`) must not hit Celery's pool children directly, or billiard can
    # hang at exit on the queue lock a killed child held. This process stops the workers,
    # and they get SIGTERM from the kernel if this process dies first.
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queues", queue, "--concurrency", "1"],
            start_new_session=True,
            preexec_fn=terminate_with_parent(),
        )
        for queue in (settings.gpu_queue, settings.cpu_queue)
    ]
    log.warning("worker pids %s; API on http://%s:%d", [c.pid for c in children], host, port)
    try:
        _serve(host, port)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


@db.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply Alembic migrations."""
    from app.core.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    print(f"database at {revision}")


@keys.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="Tenant name (created if new).")]) -> None:
    """Print a new API key once; only its hash is stored."""
    from app.core.db import session_scope
    from app.core.keys import create_key

    with session_scope(get_settings().database_url) as session:
        key, row = create_key(session, tenant)
        session.commit()
    print(key)
    print(f"tenant {row.name} ({row.id}); this key is shown only once", file=sys.stderr)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
