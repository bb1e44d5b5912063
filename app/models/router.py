"""HTTP routes of models and backbones: parse, call one service function, return a schema."""

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.files import download_responses, weights_file_response
from app.api.pagination import AfterQuery, LimitQuery, page_of
from app.api.problems import problems
from app.core import registry
from app.core.errors import Invalid, field_error
from app.models import inference, service
from app.models.exporter import ExportBuilds
from app.models.schemas import BackboneList, ModelPage, ModelRead, PredictResponse

router = APIRouter(tags=["models"])


async def model_cache(request: Request) -> inference.ModelCache:
    return request.app.state.model_cache


ModelCacheDep = Annotated[inference.ModelCache, Depends(model_cache)]


async def export_builds(request: Request) -> ExportBuilds:
    return request.app.state.export_builds


ExportBuildsDep = Annotated[ExportBuilds, Depends(export_builds)]


@router.get("/v1/models", response_model=ModelPage, summary="List models, newest first")
def list_models(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> dict:
    """A cursor page of the tenant's models (one per succeeded job), newest first."""
    return page_of(service.list_(session, tenant, limit, after), limit, ModelRead.model_validate)


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelRead,
    responses=problems(404),
    summary="Get a model",
)
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelRead:
    """Backbone, classes in class-index order, image size, the best epoch's metrics with
    the evaluation report, and the export formats made so far.
    """
    return ModelRead.model_validate(service.get(session, tenant, model_id))


@router.get(
    "/v1/models/{model_id}/content",
    response_class=Response,
    responses={
        **download_responses("The weights file, or the export `format` names"),
        **problems(404),
    },
    summary="Download the model's weights file (ETag = sha256)",
)
async def download_model(
    model_id: str,
    request: Request,
    session: SessionDep,
    storage: StorageDep,
    builds: ExportBuildsDep,
    tenant: TenantDep,
    format: Annotated[
        Literal["safetensors", "onnx", "torchscript"],
        Query(
            description="onnx and torchscript are made on first request and checked against "
            "the torch model on sample inputs (see the model's `exports`)."
        ),
    ] = "safetensors",
) -> Response:
    """`format=safetensors` (the default): the best epoch's weights file, which loads
    with `strict=True` into `torchvision.models.get_model(backbone, weights=None,
    num_classes=len(classes))`. `onnx` and `torchscript` are exported on first
    request and checked against the torch model. `ETag` is the file's sha256:
    `If-None-Match` answers 304; `Range` is honoured. A request for an export being made
    waits for it (seconds to minutes, once per model and format).
    """
    if format != "safetensors":
        row, record = await service.export(session, storage, builds, tenant, model_id, format)
        suffix = "onnx" if format == "onnx" else "pt"
        key, sha256, size = record["storage_key"], record["sha256"], record["size_bytes"]
        name = f"{row.id}.{suffix}"
    else:
        row = await run_in_threadpool(service.get, session, tenant, model_id)
        key, sha256, size, name = (
            row.storage_key,
            row.sha256,
            row.size_bytes,
            f"{row.id}.safetensors",
        )
    # Blocking: a remote store's file is fetched into the host cache first.
    return await run_in_threadpool(weights_file_response, request, storage, key, sha256, size, name)


@router.post(
    "/v1/models/{model_id}/predict",
    response_model=PredictResponse,
    responses=problems(404),
    summary="Classify one or more images",
)
async def predict(
    model_id: str,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    cache: ModelCacheDep,
    tenant: TenantDep,
    request: Request,
    files: Annotated[list[UploadFile], File(description="One or more images.")],
    top_k: Annotated[int, Query(ge=1, description="Capped at the class count.")] = 5,
) -> PredictResponse:
    """Multipart `files`: one or more images (JPEG, PNG, BMP, GIF, WebP or TIFF),
    decoded exactly as training decoded them; `top_k` labels each, capped at the
    class count. Concurrent requests share forward passes (dynamic micro-batching); a
    full queue answers 503 `overloaded` with `Retry-After`. An unreadable image: 422
    naming the file.
    """
    if len(files) > settings.max_predict_files:
        raise Invalid(
            f"at most {settings.max_predict_files} files per request",
            code="too_many_files",
            errors=[field_error("files", f"{len(files)} files sent")],
        )
    # Uploads are read in the service, once the request has its place in the model's queue.
    payload = [(f.filename or f"file{i}", f.file) for i, f in enumerate(files)]
    started = time.perf_counter()
    predictions = await service.predict(
        session, storage, cache, tenant, model_id, payload, top_k, settings.max_image_pixels
    )
    request.app.state.metrics.predict.observe(time.perf_counter() - started)
    return PredictResponse(model_id=model_id, predictions=predictions)


@router.get(
    "/v1/backbones",
    response_model=BackboneList,
    tags=["backbones"],
    summary="Backbones and weights this install can use, and which weight files are present",
)
def list_backbones(_: TenantDep) -> dict:
    """Every torchvision classification model, its weight enums, and whether each weight
    file is in this host's cache (`TORCH_HOME`). A job naming an absent file has its
    worker download it, unless downloads are off (`FINETUNE_WEIGHTS_DOWNLOAD=false`):
    then it may start only from files present.
    """
    return {"data": registry.describe_backbones(), "has_more": False, "next_cursor": None}
