"""Liveness and readiness probes (no key needed)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionDep, SettingsDep, StorageDep
from app.core import queue

router = APIRouter(tags=["operations"])


@router.get("/livez", summary="The process is up")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database, broker and storage answer",
    responses={503: {"description": "A dependency is down; the body says which"}},
)
def readyz(session: SessionDep, settings: SettingsDep, storage: StorageDep) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, probe in (
        ("database", lambda: session.execute(text("SELECT 1"))),
        ("broker", lambda: queue.broker_ok(settings)),
        ("storage", storage.writable),
    ):
        try:
            ok = probe() is not False
            checks[name] = "ok" if ok else "failing"
        except Exception as exc:  # a probe reports, it never raises
            checks[name] = f"failing: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
