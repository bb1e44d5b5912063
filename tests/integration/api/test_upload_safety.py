"""Every hostile or awkward upload gets its answer, and a refusal leaves no row and no file."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import get_session
from app.core.config import Settings
from app.core.models import Dataset
from app.main import create_app
from tests.support import crafted

PNG = crafted.image_bytes("PNG")
OK, REFUSED = 201, 422


def _case(name, build, status, code=None, named=(), warnings=(), **limits):  # type: ignore[no-untyped-def]
    return pytest.param(build, status, code, set(named), set(warnings), limits, id=name)


CASES = [
    _case(
        "zip_slip",
        lambda: crafted.with_extra({"../evil.png": PNG}),
        REFUSED,
        "archive_unsafe",
        ["../evil.png"],
    ),
    _case(
        "absolute_path",
        lambda: crafted.with_extra({"/tmp/evil-abs.png": PNG}),
        REFUSED,
        "archive_unsafe",
    ),
    _case(
        "backslashes",
        lambda: crafted.with_extra({"digit_0\\..\\..\\evil.png": PNG}),
        REFUSED,
        "archive_unsafe",
    ),
    _case(
        "drive_letter", lambda: crafted.with_extra({"C:/evil.png": PNG}), REFUSED, "archive_unsafe"
    ),
    _case(
        "tar_symlink", lambda: crafted.link_tar(crafted.tarfile.SYMTYPE), REFUSED, "archive_unsafe"
    ),
    _case(
        "tar_hardlink", lambda: crafted.link_tar(crafted.tarfile.LNKTYPE), REFUSED, "archive_unsafe"
    ),
    _case("tar_device", crafted.char_device_tar, REFUSED, "archive_unsafe"),
    _case("zip_bomb", crafted.zip_bomb, REFUSED, "archive_too_large"),
    _case(
        "tar_bomb",
        lambda: crafted.tar_bomb(3 * 2**20),
        REFUSED,
        "archive_too_large",
        max_extracted_bytes=2**20,
    ),
    _case("100k_members", lambda: crafted.many_members(100_001), REFUSED, "archive_too_large"),
    # Its 422 could not be written as JSON (a lone surrogate), so it was a 500.
    _case(
        "latin1_tar_name",
        crafted.latin1_name_tar,
        REFUSED,
        "archive_unsafe",
        ["digit_0/caf\\xe9.png"],
    ),
    _case(
        "oversized_upload",
        lambda: crafted.with_extra({}),
        413,
        "upload_too_large",
        max_upload_bytes=4096,
    ),
    _case("not_an_archive", lambda: b"plain text, not an archive", REFUSED, "archive_invalid"),
    _case(
        "truncated_png",
        lambda: crafted.with_extra({"digit_0/cut.png": PNG[:70]}),
        REFUSED,
        "image_invalid",
        ["digit_0/cut.png"],
    ),
    _case(
        "corrupt_jpeg",
        lambda: crafted.with_extra(
            {"digit_1/bad.jpg": crafted.image_bytes("JPEG")[:200] + b"\x00garbage" * 50}
        ),
        REFUSED,
        "image_invalid",
        ["digit_1/bad.jpg"],
    ),
    _case(
        "decompression_bomb_png",
        lambda: crafted.with_extra({"digit_0/bomb.png": crafted.bomb_png()}),
        REFUSED,
        "image_invalid",
        ["digit_0/bomb.png"],
    ),
    _case(
        "text_named_jpg",
        lambda: crafted.with_extra({"digit_0/notes.jpg": b"hello", "digit_1/x.png": b"no"}),
        REFUSED,
        "image_invalid",
        ["digit_0/notes.jpg", "digit_1/x.png"],
    ),
    _case(
        "one_class",
        lambda: crafted._zip(crafted.good_members(range(1))),
        REFUSED,
        "dataset_too_few_classes",
    ),
    _case(
        "empty_class",
        lambda: crafted.with_extra({"digit_7/": b"", "digit_7/.DS_Store": b"x"}),
        REFUSED,
        "class_empty",
        ["digit_7/"],
    ),
    _case(
        "cmyk_jpeg",
        lambda: crafted.with_extra({"digit_0/cmyk.jpg": crafted.image_bytes("JPEG", "CMYK")}),
        OK,
    ),
    _case(
        "16_bit_png",
        lambda: crafted.with_extra({"digit_0/deep.png": crafted.sixteen_bit_png()}),
        OK,
    ),
    _case(
        "exif_rotated_jpeg",
        lambda: crafted.with_extra({"digit_1/rot.jpg": crafted.exif_rotated_jpeg()}),
        OK,
    ),
    _case(
        "palette_alpha_png",
        lambda: crafted.with_extra(
            {"digit_1/p.png": crafted.image_bytes("PNG", "P", transparency=0)}
        ),
        OK,
    ),
    _case(
        "macosx_junk",
        lambda: crafted.with_extra({"__MACOSX/digit_0/._a.png": b"junk", ".DS_Store": b"x"}),
        OK,
        warnings=["junk_skipped"],
    ),
    _case(
        "duplicates_and_leakage",
        crafted.duplicates_and_leakage,
        OK,
        warnings=["duplicate_image", "split_leakage"],
    ),
]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("build", "status", "code", "named", "warnings", "limits"), CASES)
def test_upload(  # type: ignore[no-untyped-def]
    build: Callable[[], bytes],
    status,
    code,
    named,
    warnings,
    limits,
    settings: Settings,
    db_session: Session,
    tmp_path: Path,
) -> None:
    custom = settings.model_copy(update=limits)
    app = create_app(custom)
    app.dependency_overrides[get_session] = lambda: db_session
    rows = db_session.scalar(select(func.count()).select_from(Dataset))
    outside_before = _files(tmp_path) - _files(custom.data_dir)
    with TestClient(app) as client:
        response = client.post("/v1/datasets", files={"file": ("upload.zip", build())})
    assert response.status_code == status, response.text[:800]
    body = response.json()
    if status == OK:
        assert {w["code"] for w in body["warnings"]} >= warnings, body["warnings"]
        return
    assert response.headers["content-type"] == "application/problem+json"
    assert body["code"] == code, body
    reported = {e.get("field") or e.get("path") for e in body.get("errors") or []}
    assert named <= reported, body
    assert db_session.scalar(select(func.count()).select_from(Dataset)) == rows
    assert not _files(Path(custom.storage_url)), "refused upload left files in storage"
    assert not _files(custom.work_dir / "uploads"), "refused upload left staging files"
    assert _files(tmp_path) - _files(custom.data_dir) == outside_before
    assert not os.path.exists("/tmp/evil-abs.png")


def test_an_upload_to_a_trailing_slash_is_redirected_not_refused_as_too_large(
    settings: Settings, db_session: Session
) -> None:
    """Its body was held to the JSON routes' 1 MiB: a 413 about a size that was not the cause."""
    app = create_app(settings)
    app.dependency_overrides[get_session] = lambda: db_session
    body = crafted.with_extra({"digit_0/padding.txt": os.urandom(2 * 2**20)})
    with TestClient(app) as client:
        response = client.post(
            "/v1/datasets/", files={"file": ("upload.zip", body)}, follow_redirects=False
        )
    assert response.status_code == 307 and response.headers["location"].endswith("/v1/datasets")
