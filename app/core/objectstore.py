"""Bounded requests to S3: a silent object store fails a call instead of holding it forever.

Measured against a server that accepts connections and then says nothing (a frozen MinIO,
a dead host behind a load balancer), with s3fs's own defaults (s3fs 2026.9, aiobotocore
3.10, aiohttp 3.14): an `exists` gave up after ~6.5 min (a 15 s read timeout × 5 botocore
attempts × 5 s3fs retries) and an upload never did (still waiting after 20 min). botocore
asks for `Expect: 100-continue` on every upload; aiohttp waits for that interim answer
before it writes the body, and its socket-read timeout only starts once the body is
written, so nothing bounded the wait (aio-libs/aiobotocore#1001, marin-community/marin#7807).

`s3_options` fills in what the operator left out of `FINETUNE_STORAGE_OPTIONS`:
connect and read timeouts, botocore's "standard" retry mode (3 attempts), and
`BoundedSession`, which sends uploads without the `Expect` header (what botocore's own
synchronous client ends up doing after waiting a second for the interim answer) and
bounds each whole request. Every s3fs request moves at most one part (50 MiB by default)
either way, so a whole-request bound never cuts a healthy large transfer short.
`s3_storage` keeps s3fs's own retry loop around botocore's to one retry: the two
layers multiply, and 5 × 3 attempts made a silent store's every call last 15 timeouts.
"""

import functools
from typing import Any

import aiohttp
from aiobotocore.httpsession import AIOHTTPSession

from app.core.config import Settings
from app.core.storage import RemoteStorage, host_cache, workspaces

# s3fs's loop around botocore's: one retry still covers what botocore cannot retry itself,
# a body cut off half-read (IncompleteRead, ClientPayloadError).
S3FS_TRIES = 2


class BoundedSession(AIOHTTPSession):
    """aiobotocore's HTTP session with a whole-request deadline and no 100-continue wait."""

    request_deadline_s: float = 600.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout = self._bounded(self._timeout)

    def _bounded(self, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.request_deadline_s,
            sock_connect=timeout.sock_connect,
            sock_read=timeout.sock_read,
        )

    def _get_request_timeout(self, request: Any) -> aiohttp.ClientTimeout | None:
        timeout = super()._get_request_timeout(request)
        return None if timeout is None else self._bounded(timeout)

    async def send(self, request: Any) -> Any:
        # Not part of the signature (botocore never signs `Expect`), so dropping it is safe.
        request.headers.pop("Expect", None)
        return await super().send(request)


@functools.cache
def bounded_session(deadline_s: float) -> type[BoundedSession]:
    """A `BoundedSession` class with this whole-request deadline (aiobotocore wants a class).

    One class per deadline, named after it: fsspec reuses a filesystem whose arguments print
    the same, so two deadlines must never print alike, and one must not make a new class (and
    filesystem) per call."""
    name = f"BoundedSession{deadline_s:g}s"
    return type(name, (BoundedSession,), {"request_deadline_s": deadline_s})


def s3_options(options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`options` for s3fs with the service's timeouts wherever the operator set none."""
    config = {
        "connect_timeout": settings.storage_timeout_s,
        "read_timeout": settings.storage_timeout_s,
        "retries": {"mode": "standard", "max_attempts": 3},
        "http_session_cls": bounded_session(settings.storage_request_timeout_s),
        **options.get("config_kwargs", {}),
    }
    return {**options, "config_kwargs": config}


class S3Storage(RemoteStorage):
    """`RemoteStorage` on S3, where "folders" are only key prefixes."""

    directories = False


def s3_storage(url: str, settings: Settings) -> S3Storage:
    """`S3Storage` whose every call ends, answered or failed, in bounded time."""
    storage = S3Storage(
        url,
        host_cache(settings),
        workspaces(settings),
        s3_options(settings.storage_options, settings),
        probe_timeout_s=settings.storage_timeout_s,
    )
    storage.fs.retries = S3FS_TRIES  # a public attribute of s3fs, not an argument
    return storage
