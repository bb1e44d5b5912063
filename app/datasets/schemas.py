"""Dataset resources as clients see them."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.api.pagination import Page


class DatasetWarning(BaseModel):
    code: str = Field(examples=["junk_skipped"])
    message: str = Field(examples=["skipped OS metadata entry"])
    path: str | None = Field(None, examples=["__MACOSX/cats/._a.jpg"])


REPORT_EXAMPLE = {
    "duplicates": 0,
    "conflicting_labels": 0,
    "split_leakage": 0,
    "tiny_images": 1,
    "imbalance_ratio": 1.0,
    "smallest_class": {"name": "daisy", "count": 60},
}


class DatasetRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "ds_0192f3a1b2c3d4e5f6a7",
                    "name": "flowers",
                    "created_at": "2026-11-23T12:00:00Z",
                    "num_images": 120,
                    "classes": ["daisy", "rose"],
                    "class_counts": {"daisy": 60, "rose": 60},
                    "splits": {"train": 100, "val": 20, "test": 0},
                    "size_bytes": 4812345,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "warnings": [
                        {
                            "code": "tiny_image",
                            "message": "Image is only 24x24 pixels (under 32 on a side).",
                            "path": "rose/0042.png",
                        }
                    ],
                    "report": REPORT_EXAMPLE,
                }
            ]
        },
    )

    id: str
    name: str
    created_at: datetime
    num_images: int
    classes: list[str]
    class_counts: dict[str, int]
    splits: dict[str, int]
    size_bytes: int
    sha256: str
    warnings: list[DatasetWarning]
    report: dict = Field(
        default_factory=dict,
        description=(
            "Quality counts found at upload: `duplicates` (extra copies of an image within "
            "one class and split), `conflicting_labels` (images found under two or more "
            "classes), `split_leakage` (train images also in val/ or test/), `tiny_images` "
            "(under 32 px on a side), `imbalance_ratio` (largest / smallest class) and "
            "`smallest_class` {name, count}. Each matching warning names the files."
        ),
        examples=[REPORT_EXAMPLE],
    )


DatasetPage = Page[DatasetRead]
