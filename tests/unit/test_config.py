"""Settings that cannot work are refused when a process starts, naming the variable."""

import pytest
from pydantic import ValidationError

from app.core.config import Settings


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rate_limit_uploads", "20 per min"),  # was a 500 on every upload
        ("rate_limit_jobs", "lots"),
        ("device", "gpu0"),  # was a failure of every job
        ("log_level", "loud"),
        ("max_upload_bytes", "10 gallons"),
        ("max_image_pixels", "200000000"),  # Pillow refused such images, quoting this limit
    ],
)
def test_a_bad_setting_is_refused_at_start(
    field: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"FINETUNE_{field.upper()}", value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_good_spellings_are_taken() -> None:
    settings = Settings(rate_limit_uploads="20 per minute", device="cuda:1", log_level="debug")
    assert (settings.rate_limit_uploads, settings.device, settings.log_level) == (
        "20 per minute",
        "cuda:1",
        "DEBUG",
    )


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker compose passes `${VAR:-}` on as an empty string.
    monkeypatch.setenv("FINETUNE_STORAGE_OPTIONS", "")
    monkeypatch.setenv("FINETUNE_DEVICE", "")
    assert (Settings().storage_options, Settings().device) == ({}, "auto")


def test_sizes_take_units_or_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_MAX_UPLOAD_BYTES", "2GiB")
    monkeypatch.setenv("FINETUNE_MAX_PREDICT_BYTES", "1048576")
    settings = Settings()
    assert (settings.max_upload_bytes, settings.max_predict_bytes) == (2 * 2**30, 2**20)
