"""Liveness and readiness probes (no key needed)."""

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep, StorageDep
from app.core import queue
from app.core.migrate import schema_behind

router = APIRouter(tags=["operations"])


class Readiness(BaseModel):
    """What /readyz found: `ok`, `pending` (warm-up) or `failing: why`, per check."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        examples=[{"database": "ok", "broker": "ok", "storage": "ok", "warm_up": "ok"}]
    )


@router.get("/livez", summary="The process is up")
def livez() -> dict[str, str]:
    """200 while the process serves requests; nothing else is checked."""
    return {"status": "ok"}


def _ok(result: object) -> str:
    return "failing" if result is False else "ok"


def _database(session: Session) -> str:
    """ "ok" when the database answers and its schema is not behind this code's migrations."""
    current: set[str] = set()
    if inspect(session.connection()).has_table("alembic_version"):
        current = set(session.scalars(text("SELECT version_num FROM alembic_version")))
    problem = schema_behind(current)
    return "ok" if problem is None else f"failing: {problem}"


@router.get(
    "/readyz",
    summary="Database (with its schema), broker and storage answer; start-up warm-up is done",
    responses={
        200: {"model": Readiness, "description": "Ready"},
        503: {"model": Readiness, "description": "A dependency is down or warm-up runs"},
    },
)
def readyz(
    request: Request, session: SessionDep, settings: SettingsDep, storage: StorageDep
) -> JSONResponse:
    """200 `{status: ok, checks}` when the database (at the current schema), the broker
    and the storage answer and the start-up warm-up has finished; otherwise 503 with
    the same body, each check saying what failed.
    """
    checks: dict[str, str] = {}
    for name, probe in (
        ("database", lambda: _database(session)),
        ("broker", lambda: _ok(queue.broker_ok(settings))),
        ("storage", lambda: _ok(storage.writable())),
    ):
        try:
            checks[name] = probe()
        except Exception as exc:  # a probe reports, it never raises
            checks[name] = f"failing: {type(exc).__name__}"
    # Until app.main's warm-up has imported torchvision and frozen its objects out of the
    # garbage collector, requests here wait on it: p99 of GET /v1/jobs/{id} was 120-280 ms
    # in the first seconds while a job trained (12 runs), 10-15 ms after. Traffic waits too.
    warm_up = getattr(request.app.state, "warm_up", None)
    checks["warm_up"] = "pending" if warm_up is not None and warm_up.is_alive() else "ok"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
