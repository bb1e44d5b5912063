"""Kill, pause, flush and cut things under a training job; it must end once, whole and right."""

import json
import os
import signal
import time

import pytest
from safetensors.torch import load_file, save_file
from sqlalchemy import select, text

from app.core.models import Checkpoint
from app.core.storage import LocalStorage
from app.jobs.service import sweep_files
from tests.integration.durability.checks import (
    SPEC,
    assert_clean_history,
    events,
    started_attempts,
    submit,
    wait_epochs,
    wait_for,
)
from tests.integration.durability.conftest import Cluster
from tests.support.client import wait_job
from tests.support.processes import wait_log
from worker.training.checkpoint import read_metadata

pytestmark = pytest.mark.integration
SLOW = "step_delay=0.15"  # about 1.5 s an epoch: room to strike mid-epoch


def _child_pid(cluster: Cluster, job_id: str) -> int:
    return int(cluster.job_row(job_id).worker_id.rsplit(":", 1)[1])  # type: ignore[union-attr]


def test_kill_9_of_the_training_child_resumes_from_last_epoch(cluster: Cluster) -> None:
    cluster.worker(faults=SLOW)
    job_id = submit(cluster)
    wait_epochs(cluster, job_id, 2)
    os.kill(_child_pid(cluster, job_id), signal.SIGKILL)
    job = assert_clean_history(cluster, job_id)
    attempts = (job["attempts"], started_attempts(cluster, job_id))
    assert attempts == (2, [1, 2]), cluster.lease_log(job_id)


def test_a_crash_before_success_trains_the_last_epoch_again(cluster: Cluster) -> None:
    # The last epoch writes its checkpoint but no optimiser state, and commits it with the
    # job's success: killed in between, the job resumes after the epoch before the last.
    cluster.worker(faults="crash_before_success=1")
    job_id = submit(cluster)
    job = assert_clean_history(cluster, job_id)
    assert (job["attempts"], started_attempts(cluster, job_id)) == (2, [1, 2])
    resumed = [
        e["data"]["resumed_after_epoch"]
        for e in events(cluster, job_id)
        if "resumed_after_epoch" in e["data"]
    ]
    assert resumed == [0, SPEC["epochs"] - 1]
    artifacts = cluster.root / "var" / "artifacts"
    state = artifacts / "jobs" / job_id / "state"
    assert not list(state.glob("*")), "a finished job keeps no optimiser state"
    with cluster.sessions() as session:
        keys = list(
            session.scalars(select(Checkpoint.storage_key).where(Checkpoint.job_id == job_id))
        )
    assert all((artifacts / key).is_file() for key in keys)
    # Attempt 1 stored its last epoch's checkpoint and died before any row named it: the
    # sweep of job files removes it (an hour after the job ended; here at once).
    left = f"jobs/{job_id}/checkpoints/epoch-{SPEC['epochs']:04d}-a1.safetensors"
    assert (artifacts / left).is_file() and left not in keys
    with cluster.sessions() as session:
        removed = sweep_files(session, LocalStorage(artifacts), older_than_s=-60)
    assert [key for key in removed if job_id in key] == [left]
    assert all((artifacts / key).is_file() for key in keys)


def test_kill_9_of_the_worker_main_process(cluster: Cluster) -> None:
    first = cluster.worker(faults=SLOW)
    job_id = submit(cluster)
    wait_epochs(cluster, job_id, 1)
    child = _child_pid(cluster, job_id)
    os.kill(first.pid, signal.SIGKILL)
    cluster.worker(faults=SLOW)
    job = assert_clean_history(cluster, job_id)
    assert job["attempts"] == 2, cluster.lease_log(job_id)
    wait_for(
        lambda: not os.path.exists(f"/proc/{child}") or _zombie(child), what="orphan child exits"
    )


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_task_outliving_the_visibility_timeout_runs_once(cluster: Cluster) -> None:
    cluster.worker(faults=SLOW, visibility_timeout_s="1")
    job_id = submit(cluster)
    job = assert_clean_history(cluster, job_id)
    attempts = (job["attempts"], started_attempts(cluster, job_id))
    assert attempts == (1, [1]), cluster.lease_log(job_id)


def test_paused_worker_past_its_lease_is_fenced_off(cluster: Cluster) -> None:
    paused = cluster.worker(faults=SLOW)
    job_id = submit(cluster)
    wait_epochs(cluster, job_id, 1)
    os.killpg(paused.pid, signal.SIGSTOP)
    try:
        cluster.worker(faults=SLOW)
        wait_for(
            lambda: cluster.job_row(job_id).attempts == 2, what="second attempt claims the job"
        )
    finally:
        os.killpg(paused.pid, signal.SIGCONT)  # the stale attempt wakes up and must write nothing
    job = assert_clean_history(cluster, job_id)
    assert job["attempts"] == 2, cluster.lease_log(job_id)


def test_redis_flushed_mid_job_and_down_at_submit(cluster: Cluster) -> None:
    cluster.worker(faults=SLOW)
    running_id = submit(cluster)
    wait_epochs(cluster, running_id, 1)
    waiting_id = submit(cluster)
    cluster.redis.flushall()  # the waiting job's message is gone
    assert_clean_history(cluster, running_id)
    assert_clean_history(cluster, waiting_id)

    cluster.redis.stop()
    started = time.monotonic()
    down_id = submit(cluster)  # still 202: the row is the truth
    assert time.monotonic() - started < 10
    assert cluster.client.get(f"/v1/jobs/{down_id}").json()["status"] == "queued"
    cluster.redis.start()
    job = assert_clean_history(cluster, down_id)
    assert job["attempts"] == 1, cluster.lease_log(down_id)


def test_a_silent_redis_holds_up_no_request_and_loses_no_job(cluster: Cluster) -> None:
    """Redis frozen with its connections open answers nothing: the API must not wait forever.

    Without a socket timeout each submit and each /readyz probe held an API thread for as
    long as Redis stayed silent, and the workers' reaper stopped in the middle of a round.
    """
    cluster.worker()
    with cluster.redis.paused():
        started = time.monotonic()
        job_id = submit(cluster)  # 202: the row is the truth, the send gives up
        submitted = time.monotonic() - started
        ready = cluster.client.get("/readyz")
        probed = time.monotonic() - started - submitted
        assert cluster.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert submitted < 10, submitted
    assert probed < 10, probed
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["broker"].startswith("failing"), ready.json()
    job = assert_clean_history(cluster, job_id)  # re-sent by the reaper once Redis answers
    assert job["attempts"] == 1, cluster.lease_log(job_id)


def test_postgres_connections_killed_mid_job(cluster: Cluster) -> None:
    cluster.worker(faults=SLOW)
    job_id = submit(cluster)
    wait_epochs(cluster, job_id, 1)
    for _ in range(3):
        with cluster.sessions() as session:
            session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            session.commit()
        time.sleep(0.7)
    assert_clean_history(cluster, job_id)


def test_sigterm_hands_the_job_to_another_worker(cluster: Cluster) -> None:
    leaving = cluster.worker(faults=SLOW)
    job_id = submit(cluster)
    wait_epochs(cluster, job_id, 2)
    leaving.send_signal(signal.SIGTERM)  # like `docker stop`: the main process only
    leaving.wait(timeout=30)
    cluster.worker(faults=SLOW)
    job = assert_clean_history(cluster, job_id)
    assert job["attempts"] == 2, cluster.lease_log(job_id)
    released = [e for e in events(cluster, job_id) if e["data"].get("reason") == "shutdown"]
    assert len(released) == 1


def test_a_resumed_job_keeps_the_normalisation_its_first_epochs_had(cluster: Cluster) -> None:
    # Workers of two versions may pick different mean/std for one backbone (GoogLeNet's and
    # Inception v3's torchvision weights take 0.5 since 2026-12-04). Here the checkpoint of the
    # last epoch says what an older worker would have written; the new one must train the
    # epochs left with it and write it into their files and the model.
    leaving = cluster.worker(faults=SLOW)
    job_id = submit(cluster)
    wait_epochs(cluster, job_id, 2)
    leaving.send_signal(signal.SIGTERM)
    leaving.wait(timeout=30)
    artifacts = cluster.root / "var" / "artifacts"
    with cluster.sessions() as session:
        last = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job_id, Checkpoint.resume_key.is_not(None))
            .order_by(Checkpoint.epoch.desc())
        ).first()
    assert last is not None
    older = {"mean": json.dumps([0.5, 0.5, 0.5]), "std": json.dumps([0.5, 0.5, 0.5])}
    path = artifacts / last.storage_key
    save_file(load_file(path), path, metadata={**read_metadata(path), **older})
    cluster.worker(faults=SLOW)
    job = assert_clean_history(cluster, job_id)
    assert job["attempts"] == 2, cluster.lease_log(job_id)
    with cluster.sessions() as session:
        keys = session.scalars(
            select(Checkpoint.storage_key)
            .where(Checkpoint.job_id == job_id, Checkpoint.epoch > last.epoch)
            .order_by(Checkpoint.epoch)
        ).all()
    model = cluster.root / "model.safetensors"
    model.write_bytes(cluster.client.get(f"/v1/models/{job['model_id']}/content").content)
    for written in [*(artifacts / key for key in keys), model]:
        assert {k: read_metadata(written)[k] for k in older} == older, written


def test_cancel_while_queued_and_while_running(cluster: Cluster) -> None:
    queued_id = submit(cluster)
    assert cluster.client.post(f"/v1/jobs/{queued_id}/cancel").json()["status"] == "cancelled"
    worker = cluster.worker(faults=SLOW)
    running_id = submit(cluster)
    wait_epochs(cluster, running_id, 1)
    assert cluster.client.post(f"/v1/jobs/{running_id}/cancel").status_code == 202
    assert wait_job(cluster.client, running_id, timeout=10)["status"] == "cancelled"
    # A cancel that lands while the worker is lost still ends the job, never resumes it.
    paused_id = submit(cluster)
    wait_epochs(cluster, paused_id, 1)
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        cluster.client.post(f"/v1/jobs/{paused_id}/cancel")
        cluster.worker(faults=SLOW)  # its reaper finds the lapsed lease
        assert wait_job(cluster.client, paused_id, timeout=30)["status"] == "cancelled"
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    assert cluster.job_row(queued_id).attempts == 0
    assert cluster.job_row(paused_id).attempts == 1
    assert cluster.job_row(queued_id).status == "cancelled"


def _assert_cancelled_whole(cluster: Cluster, job_id: str) -> list[int]:
    """One terminal event (cancelled), and no optimiser state kept: it never resumes.

    The epochs whose checkpoints remain."""
    assert wait_job(cluster.client, job_id, timeout=30)["status"] == "cancelled"
    terminal = [
        e["data"]["status"]
        for e in events(cluster, job_id)
        if e["type"] == "status" and e["data"]["status"] in {"succeeded", "failed", "cancelled"}
    ]
    assert terminal == ["cancelled"]
    state = cluster.root / "var" / "artifacts" / "jobs" / job_id / "state"
    assert not list(state.glob("*")), "a cancelled job keeps no optimiser state"
    ckpts = cluster.client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    return [c["epoch"] for c in ckpts]


def test_a_cancel_then_a_sigterm_ends_the_job_cancelled(cluster: Cluster) -> None:
    # SIGTERM is checked before the cancel flag, and here the flag would be polled only
    # after 30 s: the release must see the cancel, not queue a job no worker would claim.
    leaving = cluster.worker(faults=SLOW, cancel_poll_interval_s="30")
    job_id = submit(cluster)
    wait_epochs(cluster, job_id, 1)
    assert cluster.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    leaving.send_signal(signal.SIGTERM)
    leaving.wait(timeout=30)
    assert _assert_cancelled_whole(cluster, job_id)
    assert cluster.job_row(job_id).attempts == 1


def _wait_decoding(cluster: Cluster, job_id: str) -> None:
    def decoding() -> bool:
        return any("decoding" in e["data"] for e in events(cluster, job_id))

    wait_for(decoding, what=f"{job_id} decoding its images")


def test_a_cancel_and_a_sigterm_stop_a_first_decode(cluster: Cluster) -> None:
    # A first job on a large dataset decodes it for minutes before its first step: a cancel
    # must still end the job within seconds, and a deploy's SIGTERM hand it back, not wait
    # (the grace period would run out, killing the attempt). A size no other test decoded,
    # with ~0.1 s an image: a decode of ~15 s.
    leaving = cluster.worker(faults="decode_delay=0.1")
    cancelled = submit(cluster, image_size=36)
    _wait_decoding(cluster, cancelled)
    asked = time.monotonic()
    assert cluster.client.post(f"/v1/jobs/{cancelled}/cancel").status_code == 202
    assert _assert_cancelled_whole(cluster, cancelled) == []
    assert time.monotonic() - asked < 8

    released = submit(cluster, image_size=36)  # decodes again: a stopped decode keeps nothing
    _wait_decoding(cluster, released)
    leaving.send_signal(signal.SIGTERM)
    leaving.wait(timeout=8)
    reasons = [e["data"].get("reason") for e in events(cluster, released)]
    assert "shutdown" in reasons and cluster.job_row(released).status == "queued"
    cache = cluster.root / "var" / "work" / "cache"
    assert not [p.name for p in cache.iterdir() if "36px" in p.name or p.suffix == ".tmp"]
    cluster.worker()
    assert_clean_history(cluster, released)


def test_a_cancel_after_the_last_step_still_cancels(cluster: Cluster) -> None:
    # The user was told 202: a job that had trained every epoch when the cancel came ends
    # cancelled all the same, without the last epoch's checkpoint.
    worker = cluster.worker(faults="pause_before_success=4")
    job_id = submit(cluster)
    wait_log(cluster.last_worker_log, "fault: pausing", worker, timeout=120)
    assert cluster.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert _assert_cancelled_whole(cluster, job_id) == list(range(1, SPEC["epochs"]))
    assert not cluster.client.get(f"/v1/jobs/{job_id}").json()["model_id"]


def test_a_job_that_always_crashes_fails_after_max_attempts(cluster: Cluster) -> None:
    cluster.worker(faults="crash_at_step=2")
    job_id = submit(cluster)
    job = wait_job(cluster.client, job_id, timeout=90)
    assert job["status"] == "failed" and job["error"]["code"] == "max_attempts_exceeded"
    assert job["attempts"] == 3 and started_attempts(cluster, job_id) == [1, 2, 3]
    retried = cluster.client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    cluster.client.post(f"/v1/jobs/{job_id}/cancel")


@pytest.mark.parametrize(
    ("batch_size", "fits", "shrunk"),
    [
        (16, 8, [{"micro_batch": 8}]),  # a training step: retried from the last checkpoint
        # Only evaluation: run again in smaller passes, in place; training steps stay whole.
        (8, 8, [{"inference_batch": 32}, {"inference_batch": 16}, {"inference_batch": 8}]),
    ],
)
def test_out_of_memory_shrinks_what_ran_out_and_succeeds(
    cluster: Cluster, batch_size: int, fits: int, shrunk: list[dict]
) -> None:
    cluster.worker(faults=f"oom_above={fits}")
    job_id = submit(cluster, batch_size=batch_size)
    job = assert_clean_history(cluster, job_id)
    assert job["attempts"] == 1, cluster.lease_log(job_id)
    warnings = [e["data"] for e in events(cluster, job_id) if e["type"] == "warning"]
    assert [{k: v for k, v in w.items() if k != "code"} for w in warnings] == shrunk
    assert {w["code"] for w in warnings} == {"out_of_memory"}
