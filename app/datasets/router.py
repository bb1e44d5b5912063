"""HTTP routes of datasets: parse, call one service function, return a schema."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep, single_parts
from app.api.pagination import AfterQuery, LimitQuery, page_of
from app.api.problems import problems
from app.api.ratelimit import UploadLimit
from app.datasets import service
from app.datasets.schemas import DatasetPage, DatasetRead

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses=problems(401, 413, 429),
    summary="Upload a dataset archive",
    dependencies=[single_parts("file", "name")],
    description=(
        "A `.zip`, `.tar` or `.tar.gz` in ImageFolder form (`<class>/<image>`) or with split "
        "folders (`train/<class>/…`, `val/<class>/…`, optional `test/`). Every image is opened "
        "and checked before the answer; any bad file refuses the whole upload (422 listing "
        "every bad file) and nothing is kept."
    ),
)
def upload_dataset(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    tenant: TenantDep,
    _: UploadLimit,
    file: Annotated[UploadFile, File(description="The archive.")],
    name: Annotated[
        str | None,
        Form(
            description="Display name; defaults to the file name. No control characters.",
            pattern=service.DISPLAY_NAME,
            max_length=200,
        ),
    ] = None,
) -> DatasetRead:
    row = service.create(session, settings, storage, tenant, file.file, file.filename, name)
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return DatasetRead.model_validate(row)


@router.get("", response_model=DatasetPage, summary="List datasets, newest first")
def list_datasets(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> dict:
    """A cursor page of the tenant's datasets, newest first."""
    rows = service.list_(session, tenant, limit, after)
    return page_of(rows, limit, DatasetRead.model_validate)


@router.get(
    "/{dataset_id}", response_model=DatasetRead, responses=problems(404), summary="Get a dataset"
)
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetRead:
    """Classes (sorted) and their counts, images per split, size, sha256, and the
    warnings of its upload (skipped hidden or OS files, duplicate images).
    """
    return DatasetRead.model_validate(service.get(session, tenant, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(404, 409),
    summary="Delete a dataset (409 while a queued or running job uses it)",
)
def delete_dataset(
    dataset_id: str,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    tenant: TenantDep,
) -> Response:
    """Deletes the row and the stored images; jobs and models made from it stay. 409
    `dataset_in_use` while a queued or running job uses it.
    """
    service.delete(session, settings, storage, tenant, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
