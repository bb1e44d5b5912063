"""The one settings object, read from `FINETUNE_*` environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ByteSize, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_BROKER = "filesystem://"


class Settings(BaseSettings):
    """Service configuration; every process (API, worker, CLI) builds it the same way."""

    # Empty variables count as unset: compose passes `${VAR:-}` through as "".
    model_config = SettingsConfigDict(env_prefix="FINETUNE_", extra="ignore", env_ignore_empty=True)

    data_dir: Path = Path("./var")
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON keyword arguments for the fsspec filesystem of a storage URL, "
        'e.g. {"endpoint_url": "http://minio:9000"} for an S3-compatible store.',
    )
    storage_timeout_s: float = Field(
        10.0,
        gt=0,
        description="An S3 store silent this long on a connect or a read fails that attempt "
        "(3 attempts a request); /readyz reports storage failing after it.",
    )
    storage_request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Most time one S3 request may take, body included (each moves at most "
        "one 50 MiB part): bounds an upload to a store that stops reading.",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (a GPU if any: a worker's training process k takes GPU k), cpu, "
        "cuda, cuda:N.",
    )
    auth_required: bool = False

    gpu_queue: str = Field("gpu", description="Queue of training tasks (GPU workers).")
    cpu_queue: str = Field("cpu", description="Queue of light tasks: model exports.")
    progress_interval_s: float = Field(2.0, gt=0, description="Least time between progress writes.")
    cancel_poll_interval_s: float = Field(
        1.0, gt=0, description="Least time between cancel checks."
    )
    model_cache_size: int = Field(4, ge=1, description="Models kept loaded for predict.")
    max_predict_files: int = Field(64, ge=1)
    predict_batching: bool = Field(True, description="Share forward passes across requests.")
    predict_max_batch: int = Field(64, ge=1, description="Images in one shared forward pass.")
    predict_max_wait_ms: float = Field(5.0, ge=0, description="Wait for company after a request.")
    weights_download: bool = Field(
        True,
        description="Download a torchvision weights file missing from TORCH_HOME when its URL "
        "answers (checked at submit, fetched by the worker); false refuses such jobs "
        "(air-gapped GPU nodes).",
    )
    predict_queue_size: int = Field(
        256,
        ge=1,
        description="Images of predict requests being decoded or waiting for a forward "
        "(per model) before 503.",
    )
    predict_precision: str = Field(
        "auto",
        pattern="^(auto|fp32)$",
        description="auto: bf16 autocast where the hardware runs it natively (about 1.9x "
        "the batched throughput on an AVX512-BF16 CPU, top-1 unchanged); fp32: exact.",
    )
    decode_threads: int = Field(4, ge=1, description="Threads that decode dataset images.")
    cache_max_size: ByteSize = Field(
        ByteSize(50 * 2**30),
        ge=0,
        description="Budget of this host's cache of decoded images and remote copies "
        "(e.g. 50GiB); least recently used entries are evicted first.",
    )

    # Sizes take a number of bytes or a unit, as cache_max_size does: 10GiB, 64MB.
    max_upload_bytes: ByteSize = Field(
        ByteSize(10 * 2**30), ge=1, description="Largest dataset upload (413 above)."
    )
    max_predict_bytes: ByteSize = Field(
        ByteSize(64 * 2**20), ge=1, description="Largest predict request."
    )
    max_json_bytes: ByteSize = Field(
        ByteSize(2**20), ge=1, description="Largest body of any other request."
    )
    max_archive_members: int = Field(100_000, ge=1)
    max_extracted_bytes: ByteSize = Field(
        ByteSize(20 * 2**30), ge=1, description="Uncompressed total (bombs)."
    )
    max_compression_ratio: float = Field(200.0, gt=1, description="Per zip member (bombs).")
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        # Pillow itself refuses anything over twice its MAX_IMAGE_PIXELS (89,478,485) at open.
        le=178_956_970,
        description="Per image (decompression bombs); at most 178956970, Pillow's own limit.",
    )
    max_image_bytes: ByteSize = Field(
        ByteSize(256 * 2**20),
        ge=1,
        description="Per image file: Pillow reads some chunks whole (a PNG's private ones).",
    )
    rate_limit_uploads: str = Field("20/minute", description="Per tenant (`limits` notation).")
    rate_limit_jobs: str = Field("120/minute", description="Per tenant (`limits` notation).")
    max_running_jobs_per_tenant: int = Field(2, ge=1, description="Others wait queued.")

    worker_recycle: bool = Field(
        False, description="A fresh worker child process per job (frees all GPU memory)."
    )
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Training runs at this lower priority, so an API on the same "
        "host stays responsive.",
    )
    log_format: str = Field("json", pattern="^(json|text)$", description="json or text logs.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    lease_s: float = Field(
        30.0, gt=0, description="A running attempt's lease; renewed every third."
    )
    reaper_interval_s: float = Field(10.0, gt=0, description="How often workers reap and re-send.")
    requeue_grace_s: float = Field(5.0, ge=0, description="Age before a queued job counts as lost.")
    max_attempts: int = Field(3, ge=1, description="Crashed attempts before a job fails.")
    visibility_timeout_s: int = Field(3600, ge=1, description="Redis transport redelivery time.")
    broker_timeout_s: float = Field(
        2.0,
        gt=0,
        description="A Redis broker silent this long counts as down: a send gives up (the "
        "job stays queued and the reaper re-sends it) instead of waiting forever.",
    )

    @field_validator("rate_limit_uploads", "rate_limit_jobs")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        """Refused at start, not as a 500 on the first request it limits."""
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like 20/minute: {exc}") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value.upper()

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        self.data_dir = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'finetune.db'}"
        if not self.storage_url:
            self.storage_url = str(self.data_dir / "artifacts")
        if not self.broker_url:
            self.broker_url = EMBEDDED_BROKER
        return self

    @property
    def embedded_broker(self) -> bool:
        """True when the broker is the serverless filesystem transport."""
        return self.broker_url == EMBEDDED_BROKER

    @property
    def broker_dir(self) -> Path:
        """Folder the embedded broker keeps its message files in."""
        return self.data_dir / "broker"

    @property
    def work_dir(self) -> Path:
        """Scratch space: upload staging and decoded-image caches."""
        return self.data_dir / "work"

    @property
    def uploads_dir(self) -> Path:
        """Where uploads are received and extracted, one folder each, before storage."""
        return self.work_dir / "uploads"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests override the FastAPI dependency instead)."""
    return Settings()
