"""Watching jobs live (SSE) holds no database connection between the stream's polls."""

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text, update

from app.core.events import add_event
from app.core.models import Job
from app.jobs.stream import POLL_S, _events
from tests.conftest import PG_ADMIN_URL
from tests.support.client import upload
from tests.support.databases import fresh_database
from tests.support.factories import committed_job
from tests.support.images import digit_members, write_zip
from tests.support.processes import free_port, running, service_env, wait_http

pytestmark = pytest.mark.integration
WATCHERS = 45  # more than an API process's 40 pooled connections (app.core.db.POOL)


def _watch(client: httpx.Client, job_id: str, first: threading.Semaphore) -> None:
    """Stream the job's events; release `first` at the first one; read on until closed."""
    headers = {"Accept": "text/event-stream"}
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("id:"):
                    first.release()
                    break
            for _ in lines:
                pass
    except (httpx.HTTPError, RuntimeError):  # the test closed the client
        pass


def test_more_watchers_than_pooled_connections_leave_the_api_answering(tmp_path: Path) -> None:
    """Each stream kept its request's session, and with it a connection idle in a
    transaction, until the stream ended: the 41st watcher waited for the pool, and so did
    every other request. A database of its own: no worker of another test takes the job."""
    with fresh_database(PG_ADMIN_URL, f"finetune_sse_{os.getpid()}") as url:
        env = service_env(data_dir=str(tmp_path / "var"), database_url=url)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        with running(["api", "--port", str(port)], env, tmp_path / "api.log") as api:
            wait_http(f"{base_url}/livez", api, tmp_path / "api.log")
            with httpx.Client(base_url=base_url, timeout=30) as client:
                members, _ = digit_members(range(2), per_class=10, size=32)
                archive = write_zip(tmp_path / "two.zip", members)
                dataset = upload(client, archive).raise_for_status().json()
                body = {"dataset_id": dataset["id"], "weights": None}
                job_id = client.post("/v1/jobs", json=body).raise_for_status().json()["id"]
                first = threading.Semaphore(0)
                clients = [httpx.Client(base_url=base_url, timeout=60) for _ in range(WATCHERS)]
                watchers = [
                    threading.Thread(target=_watch, args=(c, job_id, first), daemon=True)
                    for c in clients
                ]
                for watcher in watchers:
                    watcher.start()
                try:
                    deadline = time.monotonic() + 60
                    for n in range(WATCHERS):
                        assert first.acquire(timeout=max(0, deadline - time.monotonic())), (
                            f"{n} of {WATCHERS} watchers got their first event"
                        )
                    started = time.monotonic()
                    answer = client.get(f"/v1/jobs/{job_id}")
                    assert answer.status_code == 200, answer.text
                    assert time.monotonic() - started < 5
                    admin = create_engine(PG_ADMIN_URL)
                    with admin.connect() as conn:
                        idle = conn.scalar(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db"
                                " AND state LIKE 'idle in transaction%'"
                                # not a poll caught between its SELECT and its close
                                " AND now() - state_change > interval '1 second'"
                            ),
                            {"db": url.rsplit("/", 1)[1]},
                        )
                    admin.dispose()
                    assert idle == 0
                finally:
                    for watcher_client in clients:
                        watcher_client.close()
                    deadline = time.monotonic() + 10
                    for watcher in watchers:
                        watcher.join(max(0, deadline - time.monotonic()))


def test_a_retried_jobs_stream_follows_it_past_its_earlier_failure(pg_url: str) -> None:
    """Its history reads queued, running, failed, queued, running: a stream from the start
    ended at that `failed` while the job ran again (`finetune jobs watch` printed failed)."""

    def record(job_id: str, *statuses: str) -> None:
        with sessions() as session:
            for status in statuses:
                add_event(session, job_id, "status", f"job {status}", {"status": status})
            session.execute(update(Job).where(Job.id == job_id).values(status=statuses[-1]))
            session.commit()

    async def follow(job_id: str) -> list[str]:
        seen: list[str] = []

        async def read() -> None:
            async for message in _events(pg_url, job_id, 0):
                seen.append(json.loads(message["data"])["data"]["status"])

        reader = asyncio.create_task(read())
        await asyncio.sleep(4 * POLL_S)
        assert not reader.done(), seen  # still following the retried attempt
        assert seen == ["queued", "running", "failed", "queued", "running"]
        await asyncio.to_thread(record, job_id, "succeeded")
        await asyncio.wait_for(reader, 10)  # ends at the job's end
        return seen

    with committed_job(pg_url) as (sessions, job):
        record(job.id, "queued", "running", "failed", "queued", "running")
        assert asyncio.run(follow(job.id))[-1] == "succeeded"
