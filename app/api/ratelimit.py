"""Per-tenant rate limits (the `limits` library, moving window).

The counters live in Redis when the broker is Redis, so every API process shares them;
with the embedded broker (one host) they live in process memory.
"""

import logging
import math
import time
from typing import Annotated

from fastapi import Depends, Request
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.api.deps import SettingsDep, TenantDep
from app.core.config import Settings
from app.core.errors import TooManyRequests
from app.core.queue import redis_timeouts

log = logging.getLogger(__name__)


def create_limiter(settings: Settings) -> MovingWindowRateLimiter:
    """The app's limiter (made at startup): Redis-backed when the broker is Redis.

    Redis silent for `broker_timeout_s` fails the count open, as Redis down does.
    """
    if settings.embedded_broker:
        return MovingWindowRateLimiter(storage_from_string("memory://"))
    storage = storage_from_string(settings.broker_url, **redis_timeouts(settings))
    return MovingWindowRateLimiter(storage)


def check(
    limiter: MovingWindowRateLimiter, tenant: str, action: str, rule: str, count: bool = True
) -> None:
    """Count one `action` for `tenant`; 429 with Retry-After when over `rule`. Without
    `count`, only whether one more would be allowed."""
    item = parse(rule)
    try:
        allowed = (limiter.hit if count else limiter.test)(item, action, tenant)
    except Exception:  # counters unreachable (Redis down): fail open, the job row is what matters
        log.warning("rate-limit storage unavailable; %s not counted", action, exc_info=True)
        return
    if not allowed:
        reset = limiter.get_window_stats(item, action, tenant).reset_time
        retry_after = max(1, math.ceil(reset - time.time()))
        raise TooManyRequests(
            f"too many {action} for this tenant: at most {rule}", retry_after=retry_after
        )


def limit_uploads(request: Request, settings: SettingsDep, tenant: TenantDep) -> None:
    check(request.app.state.rate_limiter, tenant, "uploads", settings.rate_limit_uploads)


def limit_jobs(request: Request, settings: SettingsDep, tenant: TenantDep) -> None:
    check(request.app.state.rate_limiter, tenant, "job submissions", settings.rate_limit_jobs)


UploadLimit = Annotated[None, Depends(limit_uploads)]
