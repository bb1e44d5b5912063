"""The embedded broker: consumers never see half a message, wake when one arrives, and stop."""

import json
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from celery.worker import state
from kombu import Connection, Queue
from kombu.transport import filesystem

from app.core import filebroker, queue
from app.core.config import Settings
from worker.celery_app import create_celery

QUEUE = "gpu"


def _connection(
    data_dir: Path, transport: str = filebroker.TRANSPORT, **transport_options: Any
) -> Connection:
    """A connection to the embedded broker's folders under `data_dir`, as the service sets them."""
    options = queue.broker_options(Settings(data_dir=data_dir)) | transport_options
    return Connection("filesystem://", transport=transport, transport_options=options)


def _channel(data_dir: Path, transport: str) -> Any:
    return _connection(data_dir, transport).default_channel


def _poll_while_writing(
    monkeypatch: pytest.MonkeyPatch, module: Any, channel: Any
) -> list[BaseException | object]:
    """Make `channel` poll the queue in the middle of each of `module`'s writes."""
    seen: list[BaseException | object] = []
    real = module.dumps

    def dumps(payload: Any) -> str:
        try:
            seen.append(channel._get(QUEUE))
        except (Empty, ValueError) as exc:
            seen.append(exc)
        return real(payload)

    monkeypatch.setattr(module, "dumps", dumps)
    return seen


def test_a_message_being_written_is_invisible_then_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = _channel(tmp_path, filebroker.TRANSPORT)
    consumer = _channel(tmp_path, filebroker.TRANSPORT)
    seen = _poll_while_writing(monkeypatch, filebroker, consumer)
    producer._put(QUEUE, {"body": "job_1"})
    assert len(seen) == 1 and isinstance(seen[0], Empty)  # nothing to take mid-write
    assert consumer._get(QUEUE) == {"body": "job_1"}
    assert list((tmp_path / "broker" / "queue").iterdir()) == []  # taken; no partial file left


def test_kombus_own_transport_still_hands_out_empty_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu issue #1551, the reason for app/core/filebroker.py.

    If this fails, kombu writes its message files atomically now: drop filebroker.py.
    """
    producer = _channel(tmp_path, "filesystem")
    consumer = _channel(tmp_path, "filesystem")
    seen = _poll_while_writing(monkeypatch, filesystem, consumer)
    producer._put(QUEUE, {"body": "job_1"})
    assert isinstance(seen[0], json.JSONDecodeError)


def test_the_worker_and_the_api_producer_use_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded_broker
    worker = create_celery(settings)
    producer = queue.get_producer(settings)
    for app in (worker, producer):
        with app.connection_for_write() as conn:
            assert isinstance(conn.transport, filebroker.Transport)
    queue.enqueue(settings, "job_0123456789abcdef012345")
    assert queue.pending_job_ids(settings) == {"job_0123456789abcdef012345"}
    consumer = _channel(tmp_path, filebroker.TRANSPORT)
    message = consumer._get(QUEUE)
    assert message["headers"]["task"] == queue.TRAIN_TASK


def test_redis_keeps_kombus_transport() -> None:
    assert queue.broker_transport("redis://localhost:6379/0") is None


def _consuming(data_dir: Path, **transport_options: Any) -> tuple[Any, list[Any], Any]:
    """A connection on the embedded broker, the bodies its consumer got, and the consumer."""
    conn = _connection(data_dir, **transport_options)
    got: list[Any] = []
    consumer = conn.Consumer(
        [Queue(QUEUE, routing_key=QUEUE)],
        callbacks=[lambda body, message: (got.append(body), message.ack())],
        accept=["json"],
    )
    return conn, got, consumer


def test_draining_delivers_then_times_out(tmp_path: Path) -> None:
    conn, got, consumer = _consuming(tmp_path)
    with consumer:
        conn.Producer().publish({"job": 1}, routing_key=QUEUE, serializer="json")
        conn.drain_events(timeout=5)
        assert got == [{"job": 1}]
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.5)
        assert time.monotonic() - started >= 0.5


def test_a_worker_told_to_stop_polls_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, got, consumer = _consuming(tmp_path)
    with consumer:
        monkeypatch.setattr(state, "should_stop", 0)  # a warm shutdown's EX_OK
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=30)
        assert time.monotonic() - started < 5, "polled out the timeout after the stop"
        conn.Producer().publish({"job": 2}, routing_key=QUEUE, serializer="json")
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=1)
        assert got == [], "a stopping worker takes no new message"


def _publish_later(data_dir: Path, delay: float) -> threading.Thread:
    """Another connection (the API's, say) publishes a message after `delay` seconds."""

    def publish() -> None:
        time.sleep(delay)
        with _connection(data_dir) as conn:
            conn.Producer().publish({"job": 3}, routing_key=QUEUE, serializer="json")

    thread = threading.Thread(target=publish)
    thread.start()
    return thread


def test_a_waiting_consumer_wakes_when_a_message_arrives(tmp_path: Path) -> None:
    conn, got, consumer = _consuming(tmp_path, polling_interval=30)
    with consumer:
        publisher = _publish_later(tmp_path, 0.3)
        started = time.monotonic()
        conn.drain_events(timeout=60)
        publisher.join()
        assert got == [{"job": 3}]
        assert time.monotonic() - started < 10, "waited for the next poll, not the message"


def test_without_inotify_it_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inotify_simple

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(inotify_simple, "INotify", unavailable)
    conn, got, consumer = _consuming(tmp_path, polling_interval=0.1)
    with consumer:
        publisher = _publish_later(tmp_path, 0.3)
        conn.drain_events(timeout=30)
        publisher.join()
        assert got == [{"job": 3}]
        assert conn.transport._arrivals is False  # polled: no watch was made
