"""HTTP routes of models and backbones: parse, call one service function, return a schema."""

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.files import weights_file_response
from app.api.pagination import AfterQuery, LimitQuery, page_of
from app.api.problems import problems
from app.core import registry
from app.core.errors import Invalid, field_error
from app.models import inference, service
from app.models.schemas import BackboneList, ModelPage, ModelRead, PredictResponse

router = APIRouter(tags=["models"])


async def model_cache(request: Request) -> inference.ModelCache:
    return request.app.state.model_cache


ModelCacheDep = Annotated[inference.ModelCache, Depends(model_cache)]


@router.get("/v1/models", response_model=ModelPage, summary="List models, newest first")
def list_models(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> dict:
    return page_of(service.list_(session, tenant, limit, after), limit, ModelRead.model_validate)


@router.get("/v1/models/{model_id}", response_model=ModelRead, responses=problems(404))
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelRead:
    return ModelRead.model_validate(service.get(session, tenant, model_id))


@router.get(
    "/v1/models/{model_id}/content",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "A safetensors weights file",
        },
        **problems(404),
    },
    summary="Download the model's weights file (ETag = sha256)",
)
def download_model(
    model_id: str,
    request: Request,
    session: SessionDep,
    storage: StorageDep,
    tenant: TenantDep,
    format: Annotated[
        Literal["safetensors", "onnx", "torchscript"],
        Query(
            description="onnx and torchscript are made on first request and checked against "
            "the torch model on sample inputs (see the model's `exports`)."
        ),
    ] = "safetensors",
) -> Response:
    if format != "safetensors":
        row, record = service.export(session, storage, tenant, model_id, format)
        suffix = "onnx" if format == "onnx" else "pt"
        return weights_file_response(
            request, storage, record["storage_key"], record["sha256"], f"{row.id}.{suffix}"
        )
    row = service.get(session, tenant, model_id)
    return weights_file_response(
        request, storage, row.storage_key, row.sha256, f"{row.id}.safetensors"
    )


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
    top_k: Annotated[int, Query(ge=1, le=1000, description="Capped at the class count.")] = 5,
) -> PredictResponse:
    if len(files) > settings.max_predict_files:
        raise Invalid(
            f"at most {settings.max_predict_files} files per request",
            code="too_many_files",
            errors=[field_error("files", f"{len(files)} files sent")],
        )
    payload = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    started = time.perf_counter()
    predictions = await run_in_threadpool(
        service.predict,
        session,
        storage,
        cache,
        tenant,
        model_id,
        payload,
        top_k,
        settings.max_image_pixels,
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
    return {"data": registry.describe_backbones(), "has_more": False, "next_cursor": None}
