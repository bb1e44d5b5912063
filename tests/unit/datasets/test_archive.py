"""Unit tests for app.datasets.archive: layouts, junk, unsafe members, bombs and bad images."""

import io
import json
import random
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from app.core.errors import Invalid
from app.datasets.archive import Limits, extract_dataset

Files = dict[str, bytes]
Build = Callable[[Path], None]


def _image(fmt: str = "PNG", size: tuple[int, int] = (8, 8), seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", size)
    img.putdata(
        [
            (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            for _ in range(size[0] * size[1])
        ]
    )
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


PNG = _image()
JPG = _image("JPEG", seed=1)


def _zip(files: Files) -> Build:
    def build(path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)

    return build


def _tar(files: Files, mode: str = "w:gz", links: dict[str, bytes] | None = None) -> Build:
    """A tar of `files`, plus link members: {name: tarfile.SYMTYPE or LNKTYPE}."""

    def build(path: Path) -> None:
        with tarfile.open(path, mode) as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for name, kind in (links or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, "/etc/passwd"
                tf.addfile(info)

    return build


def _raw(data: bytes) -> Build:
    return lambda path: path.write_bytes(data)


def _run(tmp_path: Path, build: Build, limits: Limits = Limits()):
    archive = tmp_path / "upload.bin"  # format must come from the content, not the name
    build(archive)
    return extract_dataset(archive, tmp_path / "out", limits)


OK_CASES = [
    pytest.param(
        _zip({"cats/a.png": PNG, "cats/b.jpg": JPG, "dogs/c.PNG": PNG}),
        {"cats": 2, "dogs": 1},
        {"train": 3, "val": 0, "test": 0},
        set(),
        id="zip-flat",
    ),
    pytest.param(
        _tar(
            {
                "train/cats/a.png": PNG,
                "train/dogs/b.png": PNG,
                "val/cats/c.png": PNG,
                "val/dogs/d.jpg": JPG,
                "test/dogs/e.png": PNG,
            }
        ),
        {"cats": 2, "dogs": 3},
        {"train": 2, "val": 2, "test": 1},
        set(),
        id="targz-splits",
    ),
    pytest.param(
        _zip({"digits/0/a.png": PNG, "digits/1/b.png": PNG}),
        {"0": 1, "1": 1},
        {"train": 2, "val": 0, "test": 0},
        set(),
        id="wrapper-stripped",
    ),
    pytest.param(
        _tar(
            {
                "./data/train/cats/a.png": PNG,
                "./data/train/dogs/b.png": PNG,
                "./data/val/dogs/c.png": PNG,
            },
            mode="w",
        ),
        {"cats": 1, "dogs": 2},
        {"train": 2, "val": 1, "test": 0},
        set(),
        id="plain-tar-wrapper-with-splits",
    ),
    pytest.param(
        _zip(
            {
                "cats/a.png": PNG,
                "dogs/b.png": PNG,
                "__MACOSX/cats/._a.png": b"x",
                "__MACOSX/dogs/._b.png": b"x",
                "cats/.DS_Store": b"x",
                "Thumbs.db": b"x",
            }
        ),
        {"cats": 1, "dogs": 1},
        {"train": 2, "val": 0, "test": 0},
        {"junk_skipped"},
        id="macos-junk",
    ),
    pytest.param(
        _zip(
            {"cats/a.png": PNG, "dogs/b.png": PNG, "README.txt": b"hi", "dogs/labels.csv": b"a,b"}
        ),
        {"cats": 1, "dogs": 1},
        {"train": 2, "val": 0, "test": 0},
        {"non_image_skipped"},
        id="readme-skipped",
    ),
]


@pytest.mark.parametrize(("build", "counts", "splits", "warning_codes"), OK_CASES)
def test_extracts_valid_archives(
    tmp_path: Path, build: Build, counts: dict, splits: dict, warning_codes: set
) -> None:
    report = _run(tmp_path, build)
    out = tmp_path / "out"
    assert report.classes == sorted(counts)
    assert report.class_counts == counts
    assert report.splits == splits
    assert {w["code"] for w in report.warnings} == warning_codes
    assert [e.file for e in report.entries] == [
        f"images/{i:06d}{Path(e.source).suffix.lower()}" for i, e in enumerate(report.entries)
    ]
    for e in report.entries:
        assert (out / e.file).stat().st_size == e.size_bytes > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == report.classes
    assert len(manifest["entries"]) == len(report.entries)
    assert sorted(p.name for p in out.iterdir()) == ["images", "manifest.json"]


def test_junk_warnings_name_each_hidden_root_once(tmp_path: Path) -> None:
    report = _run(tmp_path, OK_CASES[4].values[0])
    paths = sorted(w["path"] for w in report.warnings)
    assert paths == ["Thumbs.db", "__MACOSX/", "cats/.DS_Store"]


def _truncated_png() -> bytes:
    data = _image(size=(64, 64), seed=2)
    return data[: len(data) // 2]


ERROR_CASES = [
    pytest.param(
        _zip({"../x.png": PNG, "cats/a.png": PNG, "dogs/b.png": PNG}),
        None,
        "archive_unsafe",
        {"../x.png"},
        id="zip-slip",
    ),
    pytest.param(
        _zip({"/abs/x.png": PNG, "cats/a.png": PNG}),
        None,
        "archive_unsafe",
        {"/abs/x.png"},
        id="absolute-path",
    ),
    pytest.param(
        _zip({"C:/x.png": PNG, "cats\\..\\y.png": PNG}),
        None,
        "archive_unsafe",
        {"C:/x.png", "cats\\..\\y.png"},
        id="drive-and-backslash",
    ),
    pytest.param(
        _tar({"cats/a.png": PNG}, links={"dogs/b.png": tarfile.SYMTYPE}),
        None,
        "archive_unsafe",
        {"dogs/b.png"},
        id="tar-symlink",
    ),
    pytest.param(
        _tar({"cats/a.png": PNG}, links={"dogs/b.png": tarfile.LNKTYPE}),
        None,
        "archive_unsafe",
        {"dogs/b.png"},
        id="tar-hardlink",
    ),
    pytest.param(
        _raw(random.Random(0).randbytes(4096)), None, "archive_invalid", None, id="random-bytes"
    ),
    pytest.param(
        _raw(b"PK\x03\x04" + bytes(100)), None, "archive_invalid", None, id="truncated-zip"
    ),
    pytest.param(
        _zip({"cats/a.png": PNG, "cats/b.png": PNG}),
        None,
        "dataset_too_few_classes",
        None,
        id="one-class",
    ),
    pytest.param(
        _zip({"README.txt": b"hi", "cats/.DS_Store": b"x"}),
        None,
        "dataset_empty",
        None,
        id="no-images",
    ),
    pytest.param(
        _zip(
            {
                "cats/a.png": PNG,
                "cats/bad.png": _truncated_png(),
                "dogs/b.png": PNG,
                "dogs/fake.jpg": b"not an image",
            }
        ),
        None,
        "image_invalid",
        {"cats/bad.png", "dogs/fake.jpg"},
        id="bad-images",
    ),
    pytest.param(
        _zip({"cats/a.png": PNG, "dogs/b.png": PNG, "c.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"c.png"},
        id="image-outside-class",
    ),
    pytest.param(
        _zip({"train/cats/a.png": PNG, "train/dogs/b.png": PNG, "birds/c.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"birds/"},
        id="splits-mixed-with-classes",
    ),
    pytest.param(
        _zip({"train/cats/a.png": PNG, "train/dogs/b.png": PNG, "val/birds/c.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"val/birds/"},
        id="val-class-not-in-train",
    ),
    pytest.param(
        _zip({"Cats/a.png": PNG, "cats/b.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"Cats/", "cats/"},
        id="classes-differ-by-case",
    ),
    pytest.param(
        _zip({"cats/a.png": PNG, "dogs/big.png": bytes(10 * 2**20)}),
        None,
        "archive_too_large",
        {"dogs/big.png"},
        id="zip-bomb-ratio",
    ),
    pytest.param(
        _zip({f"c{i % 2}/{i}.png": PNG for i in range(6)}),
        Limits(max_members=5),
        "archive_too_large",
        None,
        id="too-many-members",
    ),
    pytest.param(
        _tar({f"c{i % 2}/{i}.png": PNG for i in range(6)}),
        Limits(max_members=5),
        "archive_too_large",
        None,
        id="too-many-tar-members",
    ),
    pytest.param(
        _zip({"cats/a.png": PNG, "dogs/b.png": PNG}),
        Limits(max_total_bytes=100),
        "archive_too_large",
        None,
        id="too-many-bytes",
    ),
    pytest.param(
        _zip({"cats/a.png": PNG, "dogs/b.png": PNG}),
        Limits(max_image_pixels=10),
        "image_invalid",
        {"cats/a.png", "dogs/b.png"},
        id="too-many-pixels",
    ),
]


@pytest.mark.parametrize(("build", "limits", "code", "paths"), ERROR_CASES)
def test_refuses_bad_archives_and_leaves_nothing(
    tmp_path: Path, build: Build, limits: Limits | None, code: str, paths: set | None
) -> None:
    with pytest.raises(Invalid) as caught:
        _run(tmp_path, build, limits or Limits())
    assert caught.value.code == code
    assert caught.value.status == 422
    if paths is not None:
        assert {e["field"] for e in caught.value.errors} == paths
        assert all(e["code"] == code for e in caught.value.errors)
    assert not (tmp_path / "out").exists()


def test_existing_empty_dest_is_kept_but_emptied_on_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(Invalid):
        _run(tmp_path, _zip({"cats/a.png": PNG, "dogs/b.txt.png": b"nope"}))
    assert list((tmp_path / "out").iterdir()) == []


def test_refuses_a_non_empty_dest(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        _run(tmp_path, _zip({"cats/a.png": PNG, "dogs/b.png": PNG}))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_module_imports_no_heavy_frameworks() -> None:
    code = (
        "import sys, app.datasets.archive; "
        "print(sorted({'torch', 'fastapi', 'sqlalchemy'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[3],
    )
    assert result.stdout.strip() == "[]"
