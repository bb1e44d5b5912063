"""Opaque, time-ordered resource ids: sorting by id is sorting by creation time."""

import secrets
import time


def new_id(prefix: str) -> str:
    """`prefix_` + 12 hex digits of milliseconds + 10 random hex digits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(5)}"
