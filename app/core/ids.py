"""Opaque, time-ordered resource ids: sorting by id is sorting by creation time."""

import re
import secrets
import time

# Every id this service issues matches this (and fits the id columns' 40 characters).
# Anything else, such as a NUL byte that Postgres refuses in text, names no resource and
# must never reach a query.
PATTERN = "^[A-Za-z0-9_-]{1,40}$"
_ID = re.compile(PATTERN)


# The prefixes of the listed resources (list cursors are ids: app.api.pagination checks them).
DATASET, JOB, MODEL = "ds", "job", "mdl"


def new_id(prefix: str) -> str:
    """`prefix_` + 12 hex digits of milliseconds + 10 random hex digits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(5)}"


def could_be_id(value: str) -> bool:
    """Whether `value` has the shape of an id; false means no row can have it."""
    return _ID.fullmatch(value) is not None
