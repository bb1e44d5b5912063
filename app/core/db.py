"""Engine and session factories, and the declarative Base shared by API, worker and Alembic."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, MetaData, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

# Deterministic constraint names keep Alembic autogenerate diffs empty on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while the worker writes; busy_timeout waits out the writer
    # lock instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


_ENGINES: dict[str, Engine] = {}

# The API serves up to 40 requests at once (AnyIO's thread pool). With SQLAlchemy's default
# pool of 5 (+10 overflow), every request beyond the fifth opened a connection and closed it
# again afterwards, and requests beyond the fifteenth queued for one: under 8 concurrent GETs
# that churn was a visible share of the API's time. Connections are opened only when needed
# and then kept, so an idle worker still holds one or two.
POOL = {"pool_size": 20, "max_overflow": 20}

# libpq settings of every PostgreSQL connection. A server that accepts TCP but answers
# nothing (frozen, a dead host behind a proxy) kept a connect waiting forever, and with it
# /readyz, any request that needed a new pooled connection, a worker's lease renewal:
# `connect_timeout` ends that. A host that vanishes without a reset (a failover, a
# partition) left established connections waiting for the kernel's ~15 minutes of
# retransmissions; keepalives notice an idle one, `tcp_user_timeout` (ms) one whose writes
# go unacknowledged, each in about a minute, and the pool's pre-ping replaces it.
PG_CONNECT = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def get_engine(url: str) -> Engine:
    """One pooled engine per database URL and process."""
    engine = _ENGINES.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False}, **POOL)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args=PG_CONNECT, **POOL)
        _ENGINES[url] = engine
    return engine


def forget_inherited_connections() -> None:
    """In a forked child: drop the parent's pooled connections without closing them."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """Session factory bound to the engine of `url`."""
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session for non-request code (worker, CLI); the caller commits."""
    session = get_sessionmaker(url)()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def end_if_idle(session: Session, seconds: float) -> None:
    """Have PostgreSQL end this transaction if its client goes quiet for `seconds` between
    statements, releasing the rows it locked.

    For a worker's writes to a job row, with its lease as `seconds`: a process frozen
    between an UPDATE and its COMMIT (SIGSTOP, a paused VM, a network partition) would
    otherwise hold the row until it wakes, and every other writer of it (a user's cancel,
    the reaper handing the job on) would wait as long. Such a transaction does no I/O
    between statements, so only a process that lost its lease anyway goes quiet so long.
    SQLite has no such setting: its writers are one host's processes.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT set_config('idle_in_transaction_session_timeout', :ms, true)"),
            {"ms": str(max(1, round(seconds * 1000)))},
        )
