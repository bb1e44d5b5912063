"""Models and predictions as clients see them."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.pagination import Page


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["mdl_0192f3a1b2c3d4e5f6a7"])
    job_id: str
    backbone: str = Field(examples=["resnet18"])
    classes: list[str] = Field(examples=[["daisy", "rose"]])
    image_size: int = Field(examples=[224])
    metrics: dict[str, Any]
    exports: dict[str, Any] = Field(
        default_factory=dict,
        description="Made exports: format → sha256, size and the checked max abs difference.",
    )
    created_at: datetime

    @field_validator("exports")
    @classmethod
    def _public(cls, exports: dict[str, Any]) -> dict[str, Any]:
        """Where the service stores a file is its own business (and may name its bucket)."""
        return {
            fmt: {k: v for k, v in record.items() if k != "storage_key"}
            for fmt, record in exports.items()
        }


class LabelScore(BaseModel):
    label: str = Field(examples=["rose"])
    score: float = Field(examples=[0.97])


class Prediction(BaseModel):
    filename: str = Field(examples=["flower.jpg"])
    label: str = Field(examples=["rose"])
    score: float = Field(examples=[0.97])
    top_k: list[LabelScore]


class PredictResponse(BaseModel):
    """One prediction per uploaded file, in upload order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "mdl_0192f3a1b2c3d4e5f6a7b8",
                    "predictions": [
                        {
                            "filename": "flower.jpg",
                            "label": "rose",
                            "score": 0.97,
                            "top_k": [
                                {"label": "rose", "score": 0.97},
                                {"label": "tulip", "score": 0.02},
                            ],
                        }
                    ],
                }
            ]
        }
    )

    model_id: str = Field(examples=["mdl_0192f3a1b2c3d4e5f6a7b8"])
    predictions: list[Prediction]


class BackboneWeight(BaseModel):
    name: str = Field(examples=["ResNet18_Weights.IMAGENET1K_V1"])
    default: bool
    present: bool = Field(description="Whether the file is in TORCH_HOME's cache.")
    file: str = Field(examples=["/root/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth"])
    url: str
    num_params: int | None = None


class BackboneRead(BaseModel):
    name: str = Field(examples=["resnet18"])
    weights: list[BackboneWeight]


class BackboneList(BaseModel):
    """Every backbone in one page (the list envelope of every other list)."""

    data: list[BackboneRead]
    has_more: bool = Field(False, description="Always false: one page holds them all.")
    next_cursor: str | None = Field(None, description="Always null.")


ModelPage = Page[ModelRead]
