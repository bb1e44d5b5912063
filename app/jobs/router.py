"""HTTP routes of jobs: parse, call one service function, return a schema."""

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.files import download_responses, weights_file_response
from app.api.pagination import AfterQuery, LimitQuery, page_of
from app.api.problems import problems
from app.api.ratelimit import limit_jobs
from app.jobs import service
from app.jobs.schemas import (
    CheckpointPage,
    CheckpointRead,
    EventPage,
    EventRead,
    JobCreate,
    JobPage,
    JobRead,
    QueueInfo,
)
from app.jobs.stream import event_stream

MAX_EVENT_ID = 2**63 - 1  # event ids are BIGINT

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses={
        200: {"model": JobRead, "description": "Replay of an Idempotency-Key"},
        **problems(),
    },
    summary="Submit a fine-tuning job",
)
def create_job(
    spec: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=200, description="Same key + same body → the same job."),
    ] = None,
) -> JobRead:
    """Validate the spec against the dataset, the backbone and the weights (a 422 names
    the field), record the job and queue it.

    Every field but `dataset_id` has a default, echoed filled in the job's `spec`. With
    an `Idempotency-Key` header the same key and body answer the first job again (200);
    the same key with another body is refused (422 `idempotency_key_reused`). `Location`
    names the new job. Submissions are rate-limited per tenant (429 `rate_limited`); a
    replay is not counted.
    """
    job, created = service.create(
        session,
        settings,
        tenant,
        spec,
        idempotency_key,
        admit=lambda: limit_jobs(request, settings, tenant),
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return _read(session, settings, [job])[0]


def _read(session: SessionDep, settings: SettingsDep, jobs: list) -> list[JobRead]:  # type: ignore[type-arg]
    waiting = service.queue_info(session, settings, jobs)
    return [
        JobRead.model_validate(j).model_copy(
            update={"queue": QueueInfo(**waiting[j.id]) if j.id in waiting else None}
        )
        for j in jobs
    ]


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    status_: Annotated[
        str | None,
        Query(alias="status", pattern="^(queued|running|succeeded|failed|cancelled)$"),
    ] = None,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
) -> dict:
    """A cursor page of the tenant's jobs, newest first; `status` filters, `after` takes
    the last page's `next_cursor`.
    """
    rows = service.list_(session, tenant, status_, limit, after)
    page = page_of(rows, limit, lambda job: job)
    page["data"] = _read(session, settings, page["data"])
    return page


@router.get("/{job_id}", response_model=JobRead, responses=problems(404), summary="Get a job")
def get_job(job_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep) -> JobRead:
    """Status, progress (epoch and step), the latest metrics, attempts, the error of a
    failed job and, once it succeeded, its `model_id`. A queued job says why it waits
    (`queue`).
    """
    return _read(session, settings, [service.get(session, tenant, job_id)])[0]


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=problems(404, 409),
    summary="Cancel a job: queued ones at once, running ones within seconds",
)
def cancel_job(
    job_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> JobRead:
    """A queued job ends `cancelled` at once; a running one within a few seconds (the
    training loop polls the flag in every step and evaluation batch). A cancel
    answered 202 ends the job `cancelled` unless it fails first, even one that had
    finished training. A job already in a terminal state: 409 `job_not_cancellable`.
    """
    return _read(session, settings, [service.cancel(session, tenant, job_id)])[0]


@router.post(
    "/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=problems(404, 409),
    summary="Re-queue a failed job; it resumes from its last checkpoint",
)
def retry_job(
    job_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> JobRead:
    """A `failed` job goes back to `queued` and resumes after its last committed epoch,
    with a fresh budget of attempts. Any other status: 409 `job_not_retryable`.
    """
    return _read(session, settings, [service.retry(session, settings, tenant, job_id)])[0]


def _event(row) -> EventRead:  # type: ignore[no-untyped-def]
    return EventRead(
        id=str(row.id), created_at=row.created_at, type=row.type, message=row.message, data=row.data
    )


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    responses={
        200: {
            "description": "The events page (JSON), or with `Accept: text/event-stream` a live "
            "SSE stream (`id:` = event id, `event:` = type, `data:` = the event as JSON) that "
            "resumes after `Last-Event-ID` and ends after the terminal status event.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problems(404),
    },
    summary="The job's events, oldest first (JSON page or live SSE)",
)
def list_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Last event id already seen.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(description="SSE resume point.")] = None,
) -> Any:
    """As JSON: a cursor page of the job's `status`, `epoch`, `checkpoint`, `warning`
    and `error` events, oldest first (`after` = the last event id seen). An `epoch`
    event's `data` holds the epoch (1-based) and its metrics.

    With `Accept: text/event-stream`: the same events live, as Server-Sent Events (`id:`
    = the event id, `event:` = its type, `data:` = the event as JSON); `Last-Event-ID`
    resumes after it. The stream ends after the terminal status event.
    """
    if "text/event-stream" in request.headers.get("accept", ""):
        service.get(session, tenant, job_id)  # 404 for a missing or another tenant's job
        return event_stream(settings.database_url, job_id, resume_point(last_event_id, after))
    rows = service.events(session, tenant, job_id, after, limit)
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [_event(r) for r in rows],
        "has_more": has_more,
        "next_cursor": str(rows[-1].id) if has_more else None,
    }


def resume_point(last_event_id: str | None, after: int | None) -> int:
    """Where a stream starts: after `Last-Event-ID` when it is an event id, else `after`.

    ASCII digits within a BIGINT only, as `after`: "²".isdigit() is true but int() refuses
    it, and a larger number overflowed the query; either was a 500. Anything else starts
    over."""
    digits = last_event_id and re.fullmatch(r"[0-9]+", last_event_id)
    if digits and int(digits[0]) <= MAX_EVENT_ID:
        return int(digits[0])
    return after or 0


@router.get(
    "/{job_id}/checkpoints",
    response_model=CheckpointPage,
    responses=problems(404),
    summary="List a job's checkpoints, one per committed epoch",
)
def list_checkpoints(job_id: str, session: SessionDep, tenant: TenantDep) -> dict:
    """Every committed epoch's weights file with its metrics, size and sha256, oldest
    first, in one page.
    """
    rows = service.checkpoints(session, tenant, job_id)
    return page_of(rows, len(rows) or 1, CheckpointRead.model_validate)


@router.get(
    "/{job_id}/checkpoints/{checkpoint_id}/content",
    response_class=Response,
    responses={**download_responses("A safetensors weights file"), **problems(404)},
    summary="Download a checkpoint's weights file (ETag = sha256)",
)
def download_checkpoint(
    job_id: str,
    checkpoint_id: str,
    request: Request,
    session: SessionDep,
    storage: StorageDep,
    tenant: TenantDep,
) -> Response:
    """The epoch's safetensors weights file (format: README, The weights file). `ETag`
    is its sha256: `If-None-Match` answers 304; `Range` is honoured.
    """
    row = service.checkpoint(session, tenant, job_id, checkpoint_id)
    name = f"{job_id}-epoch{row.epoch}.safetensors"
    return weights_file_response(
        request, storage, row.storage_key, row.sha256, row.size_bytes, name
    )


@router.get(
    "/{job_id}/plots/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "A PNG image"}, **problems(404)},
    summary="Loss/accuracy curves or the confusion matrix of a job, as PNG",
)
def job_plot(
    job_id: str,
    name: Annotated[str, Path(pattern="^(curves|confusion)$")],
    session: SessionDep,
    tenant: TenantDep,
) -> Response:
    """Drawn from the job's history on request: `curves` (loss and accuracy per epoch)
    or `confusion` (the confusion matrix of the job's evaluation report).
    """
    return Response(service.plot(session, tenant, job_id, name), media_type="image/png")
