"""Checks of a job spec that need the database or torchvision's registry."""

from sqlalchemy.orm import Session

from app.core import registry
from app.core.errors import Invalid, field_error
from app.core.models import Dataset, Model, owned
from app.jobs.schemas import JobCreate, ModelRef


def _invalid(field: str, message: str, code: str) -> Invalid:
    return Invalid(message, code=code, errors=[field_error(f"body.{field}", message)])


def check_spec(session: Session, tenant: str, spec: JobCreate, *, download: bool) -> Dataset:
    """Raise a 422 naming the field for anything the worker could not run; return the dataset.

    `download`: a torchvision weights file missing from the cache is accepted when its URL
    answers (the worker fetches it); else, or when its URL does not answer, it is refused.
    """
    dataset = owned(session, Dataset, tenant, spec.dataset_id)
    if dataset is None:
        raise _invalid(
            "dataset_id", f"dataset {spec.dataset_id} does not exist", "dataset_not_found"
        )
    if spec.backbone not in registry.backbone_names():
        raise _invalid(
            "backbone",
            f"{spec.backbone!r} is not a torchvision classification model; see GET /v1/backbones",
            "backbone_unknown",
        )
    if (problem := registry.input_size_problem(spec.backbone, spec.image_size)) is not None:
        raise _invalid(
            "image_size",
            f"{spec.backbone} cannot take {spec.image_size}×{spec.image_size} images: {problem}",
            "image_size_unsupported",
        )
    if spec.batch_size == 1 and (
        problem := registry.input_size_problem(spec.backbone, spec.image_size, batch=1)
    ):
        raise _invalid(
            "batch_size",
            f"{spec.backbone} cannot train on one {spec.image_size} px image at a time: "
            f"{problem}; use batch_size 2 or more, or larger images",
            "batch_size_unsupported",
        )
    if isinstance(spec.weights, ModelRef):
        model = owned(session, Model, tenant, spec.weights.model_id)
        if model is None:
            raise _invalid(
                "weights.model_id",
                f"model {spec.weights.model_id} does not exist",
                "model_not_found",
            )
        if model.backbone != spec.backbone:
            raise _invalid(
                "weights.model_id",
                f"model {model.id} is a {model.backbone}, not a {spec.backbone}",
                "weights_mismatch",
            )
    elif isinstance(spec.weights, str):
        try:
            resolved = registry.resolve_weights(spec.backbone, spec.weights)
        except (KeyError, ValueError):
            names = ", ".join(["DEFAULT", *registry.weight_names(spec.backbone)]) or "none"
            raise _invalid(
                "weights",
                f"{spec.weights!r} is not a weight of {spec.backbone}; one of: {names}",
                "weights_unknown",
            ) from None
        if (problem := registry.weights_problem(spec.backbone, spec.weights)) is not None:
            raise _invalid("weights", problem, "weights_unsupported")
        if not resolved.present:
            session.commit()  # ends the read: no connection held idle while the URL is asked
            why = "downloads are off" if not download else registry.download_problem(resolved.url)
            if why is not None:
                raise _invalid(
                    "weights",
                    f"{resolved.name} is not in the local cache and cannot be downloaded "
                    f"({why}): put {resolved.url} at {resolved.path} (TORCH_HOME), or use "
                    f'weights null or {{"model_id": …}}',
                    "weights_unavailable",
                )
    has_val = dataset.splits.get("val", 0) > 0
    if not has_val and spec.validation_split > 0 and min(dataset.class_counts.values()) < 2:
        raise _invalid(
            "validation_split",
            "every class needs at least 2 images to hold some out for validation",
            "dataset_too_small",
        )
    if spec.early_stopping_patience is not None and not has_val and spec.validation_split == 0:
        raise _invalid(  # it would never stop: every epoch would count as the best
            "early_stopping_patience",
            "early stopping watches validation accuracy, and this job has none: the dataset "
            "has no val/ and validation_split is 0",
            "validation_missing",
        )
    return dataset
