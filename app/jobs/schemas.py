"""Job specs, jobs, events and checkpoints as clients see them."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.api.pagination import Page


class ModelRef(BaseModel):
    """Start from a model this service trained (transfer between datasets, offline)."""

    model_config = ConfigDict(extra="forbid")
    model_id: str = Field(examples=["mdl_0192f3a1b2c3d4e5f6a7"])


class JobCreate(BaseModel):
    """A fine-tuning job spec; every field but `dataset_id` has a default, echoed back filled."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "ds_0192f3a1b2c3d4e5f6a7",
                    "backbone": "resnet18",
                    "weights": "DEFAULT",
                    "strategy": "partial",
                    "trainable_layers": 2,
                    "epochs": 5,
                    "batch_size": 32,
                    "learning_rate": 0.001,
                }
            ]
        },
    )

    dataset_id: str = Field(examples=["ds_0192f3a1b2c3d4e5f6a7"])
    backbone: str = Field("resnet18", description="Any torchvision classification model name.")
    weights: str | ModelRef | None = Field(
        "DEFAULT",
        description='`"DEFAULT"`, a torchvision weights enum name, `null` (random init) or '
        '`{"model_id": …}`.',
    )
    strategy: Literal["full", "linear_probe", "partial"] = "full"
    trainable_layers: int = Field(
        1,
        ge=0,
        le=1000,
        description="With `partial`: the last N top-level blocks (plus the head) train.",
    )
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_epochs: float = Field(0, ge=0, le=100)
    image_size: int = Field(224, ge=16, le=1024)
    augment: bool = True
    validation_split: float = Field(
        0.2, ge=0, le=0.9, description="Used when the dataset has no `val/`."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping_patience: int | None = Field(None, ge=1, le=1000, description="null = off")
    mixed_precision: Literal["auto", "off"] = "auto"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    compile: bool = Field(
        False,
        description="torch.compile the forward pass: the first epoch pays the compile; meant "
        "for GPU workers, it rarely pays on a CPU (README, Speed).",
    )

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_epochs(cls, value: float, info: ValidationInfo) -> float:
        """A field validator (not a model one), so that the 422 names `body.warmup_epochs`."""
        epochs = info.data.get("epochs")  # absent when epochs itself was invalid
        if value > 0 and epochs is not None and value >= epochs:
            raise ValueError(f"warmup_epochs must be smaller than epochs ({epochs})")
        return value


class Progress(BaseModel):
    """Where training stands: `step` of `steps` optimiser steps in `epoch` (1-based) of
    `epochs`; after an epoch ends, its last step. Zeros until the first step."""

    epoch: int = Field(0, examples=[3])
    epochs: int = Field(0, examples=[10])
    step: int = Field(0, examples=[120])
    steps: int = Field(0, examples=[250])
    fraction: float = Field(0.0, description="Of the whole job, 0 to 1.", examples=[0.248])


class JobError(BaseModel):
    """Why a job failed: a stable `code` and a message that says what to change."""

    code: str = Field(
        description=(
            "`dataset_not_found`, `model_not_found`, `weights_unavailable`, `weights_corrupt` "
            "(the start weights), `out_of_memory` (even at a micro-batch of 1), "
            "`training_diverged` (a loss or weight became NaN or infinite), "
            "`max_attempts_exceeded` (its workers kept crashing), `training_error` (anything "
            "else, with the exception's text)"
        ),
        examples=["training_diverged"],
    )
    message: str = Field(
        examples=[
            "the validation loss became inf in epoch 4; lower learning_rate (it is 5) "
            "or add warmup_epochs"
        ]
    )


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["job_0192f3a1b2c3d4e5f6a7"])
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    spec: JobCreate
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    metrics: dict[str, Any] = Field(
        examples=[
            {
                "train_loss": 0.21,
                "val_loss": 0.18,
                "val_accuracy": 0.95,
                "best_val_accuracy": 0.96,
                "images_per_second": 812.5,
            }
        ]
    )
    attempts: int
    error: JobError | None
    model_id: str | None
    queue: "QueueInfo | None" = Field(None, description="For a queued job: why it waits.")


class QueueInfo(BaseModel):
    position: int = Field(examples=[2], description="1 = next to start.")
    workers_alive: int = Field(examples=[1])
    reason: str = Field(examples=["waiting for a free worker (1 job ahead)"])


class EventRead(BaseModel):
    id: str = Field(examples=["42"])
    created_at: datetime
    type: Literal["status", "epoch", "checkpoint", "warning", "error"]
    message: str = Field(examples=["epoch 1/5: val_accuracy 0.912"])
    data: dict[str, Any]


class CheckpointRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["ckpt_0192f3a1b2c3d4e5f6a7"])
    epoch: int
    metrics: dict[str, Any]
    size_bytes: int
    sha256: str
    created_at: datetime


JobPage = Page[JobRead]
EventPage = Page[EventRead]
CheckpointPage = Page[CheckpointRead]
