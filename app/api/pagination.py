"""Cursor pages: ids are time-ordered, so the cursor is simply the last id returned."""

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field
from sqlalchemy import Select

from app.core import ids
from app.core.errors import Invalid, field_error

T = TypeVar("T")

LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size.")]
# Cursors are ids this service issued; anything else, such as a NUL byte that Postgres
# refuses in text, is a 422 naming `after` rather than a database error.
AfterQuery = Annotated[
    str | None,
    Query(
        description="`next_cursor` of the previous page.",
        examples=["job_0192f3a1b2c3d4e5f6a7"],
        pattern=ids.PATTERN,
    ),
]


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool = Field(examples=[False])
    next_cursor: str | None = Field(None, examples=[None])


# The id prefix of each listed table (app.core.ids.new_id): a cursor of another kind is a
# mistake to report, not a position (`job_…` sorts after every `ds_…`: an empty page).
PREFIXES = {"dataset": f"{ids.DATASET}_", "job": f"{ids.JOB}_", "model": f"{ids.MODEL}_"}


def paginate(stmt: Select, id_column, limit: int, after: str | None) -> Select:  # type: ignore[type-arg, no-untyped-def]
    """Newest first, strictly older than `after`; fetches one extra row to know `has_more`."""
    if after:
        prefix = PREFIXES[id_column.class_.__tablename__]
        if not after.startswith(prefix):
            message = f"not a cursor of this list (next_cursor of its previous page: {prefix}…)"
            raise Invalid(
                f"after: {message}",
                code="validation_error",
                errors=[field_error("query.after", message)],
            )
        stmt = stmt.where(id_column < after)
    return stmt.order_by(id_column.desc()).limit(limit + 1)


def page_of(rows: list, limit: int, to_schema) -> dict:  # type: ignore[type-arg, no-untyped-def]
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [to_schema(r) for r in rows],
        "has_more": has_more,
        "next_cursor": rows[-1].id if has_more else None,
    }
