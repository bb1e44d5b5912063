"""The connection pool keeps what concurrent requests opened instead of closing it again."""

from sqlalchemy import text

from app.core.db import POOL, get_sessionmaker


def test_connections_of_a_burst_stay_pooled(pg_url: str) -> None:
    sessions = get_sessionmaker(pg_url)
    burst = 12  # more than SQLAlchemy's default pool of 5, as 8 concurrent GETs need
    opened = [sessions() for _ in range(burst)]
    for session in opened:
        session.execute(text("select 1"))
    pool = sessions.kw["bind"].pool
    for session in opened:
        session.close()
    assert burst <= POOL["pool_size"]
    assert pool.checkedin() >= burst  # a closed-again connection would be missing here
