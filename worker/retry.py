"""Retry short database writes across dropped connections (failover, pg_terminate_backend)."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")


def retrying(write: Callable[[], T], tries: int = 6, first_delay: float = 0.2) -> T:
    """Run `write` (one whole transaction) again when its connection fails; ~6 s at most."""
    delay = first_delay
    for attempt in range(1, tries + 1):
        try:
            return write()
        except (OperationalError, DBAPIError) as exc:
            if attempt == tries or not (
                isinstance(exc, OperationalError) or exc.connection_invalidated
            ):
                raise
            log.warning(
                "database write failed (%s); retry %d/%d",
                type(exc.orig).__name__,
                attempt,
                tries - 1,
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
